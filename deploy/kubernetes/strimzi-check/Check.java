// Reads rendered Kubernetes resources (kubectl kustomize output) on stdin and decodes each Strimzi
// resource into Strimzi's own API model (io.strimzi:api, the classes the operator reads them with).
// Strimzi keeps fields it does not know in each object's additional properties instead of refusing
// them, so a field found there anywhere in the resource is a failure: a misspelt key, or one of
// another Strimzi version. Prints "ok KIND NAME", "FAIL KIND NAME: reason" or "skip KIND NAME" per
// resource and exits 1 if any failed. Run: java -cp '<io.strimzi:api jars>/*' Check.java < rendered
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.MappingIterator;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.dataformat.yaml.YAMLFactory;
import io.strimzi.api.kafka.model.common.UnknownPropertyPreserving;
import io.strimzi.api.kafka.model.connect.KafkaConnect;
import io.strimzi.api.kafka.model.connector.KafkaConnector;
import io.strimzi.api.kafka.model.kafka.Kafka;
import io.strimzi.api.kafka.model.nodepool.KafkaNodePool;
import io.strimzi.api.kafka.model.topic.KafkaTopic;
import io.strimzi.api.kafka.model.user.KafkaUser;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.util.ArrayList;
import java.util.Collection;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Map;

public class Check {
    static final Map<String, Class<?>> KINDS = Map.of(
            "Kafka", Kafka.class, "KafkaNodePool", KafkaNodePool.class, "KafkaConnect", KafkaConnect.class,
            "KafkaConnector", KafkaConnector.class, "KafkaUser", KafkaUser.class, "KafkaTopic", KafkaTopic.class);

    public static void main(String[] args) throws Exception {
        ObjectMapper yaml = new ObjectMapper(new YAMLFactory())
                .configure(DeserializationFeature.FAIL_ON_UNKNOWN_PROPERTIES, true);
        boolean failed = false;
        MappingIterator<JsonNode> docs = yaml.readerFor(JsonNode.class).readValues(System.in);
        while (docs.hasNext()) {
            JsonNode doc = docs.next();
            if (doc == null || doc.isNull() || doc.isMissingNode()) {
                continue;
            }
            String kind = doc.path("kind").asText();
            String name = doc.path("metadata").path("name").asText();
            Class<?> type = doc.path("apiVersion").asText().startsWith("kafka.strimzi.io/") ? KINDS.get(kind) : null;
            if (type == null) {
                System.out.println("skip " + kind + " " + name);
                continue;
            }
            try {
                List<String> unknown = new ArrayList<>();
                unknownFields(yaml.treeToValue(doc, type), kind, unknown, new IdentityHashMap<>());
                if (unknown.isEmpty()) {
                    System.out.println("ok " + kind + " " + name);
                } else {
                    failed = true;
                    System.out.println("FAIL " + kind + " " + name + ": unknown field " + String.join(", ", unknown));
                }
            } catch (Exception e) {
                failed = true;
                System.out.println("FAIL " + kind + " " + name + ": " + e.getMessage().lines().findFirst().orElse(""));
            }
        }
        System.exit(failed ? 1 : 0);
    }

    /** Every additional (unknown) property in the object graph, by its path. */
    static void unknownFields(Object value, String path, List<String> out, Map<Object, Boolean> seen) throws Exception {
        if (value == null || seen.put(value, true) != null) {
            return;
        }
        if (value instanceof Collection<?> items) {
            int i = 0;
            for (Object item : items) {
                unknownFields(item, path + "[" + i++ + "]", out, seen);
            }
            return;
        }
        if (value instanceof Map<?, ?> map) {
            for (Map.Entry<?, ?> e : map.entrySet()) {
                unknownFields(e.getValue(), path + "." + e.getKey(), out, seen);
            }
            return;
        }
        if (!value.getClass().getName().startsWith("io.strimzi.") || value.getClass().isEnum()) {
            return;
        }
        if (value instanceof UnknownPropertyPreserving preserving && preserving.getAdditionalProperties() != null) {
            for (String key : preserving.getAdditionalProperties().keySet()) {
                out.add(path + "." + key);
            }
        }
        for (Method m : value.getClass().getMethods()) {
            if (m.getParameterCount() == 0 && m.getName().startsWith("get") && !Modifier.isStatic(m.getModifiers())
                    && !m.getName().equals("getAdditionalProperties") && !m.getName().equals("getClass")) {
                String field = Character.toLowerCase(m.getName().charAt(3)) + m.getName().substring(4);
                unknownFields(m.invoke(value), path + "." + field, out, seen);
            }
        }
    }
}
