# Kafka Connect for crm-erp-sync: Debezium's image (its PostgreSQL connector on the plugin path, the
# version the native stack runs) plus Confluent's Avro converter (the connectors write Confluent wire
# format against the schema registry).
#   docker build -f deploy/docker/connect.Dockerfile -t crm-erp-sync/connect:3.6.1 .
FROM quay.io/debezium/connect:3.6.1.Final
ARG AVRO_CONVERTER=7.9.0
RUN curl -fsSL -o /tmp/avro.zip "https://hub-downloads.confluent.io/api/plugins/confluentinc/kafka-connect-avro-converter/versions/${AVRO_CONVERTER}/confluentinc-kafka-connect-avro-converter-${AVRO_CONVERTER}.zip" \
 && unzip -q /tmp/avro.zip -d /kafka/connect \
 && rm /tmp/avro.zip
