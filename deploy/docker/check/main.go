// Command check parses Dockerfiles as `docker build` does (BuildKit's Dockerfile frontend, with its
// linter's rules) and prints what each builds, as JSON, for the tests to check against the
// repository: the base images, build arguments, files copied in, user, entrypoint and command.
// A Dockerfile the frontend refuses, or any lint warning, exits 1 with the reason.
//
//	go run . deploy/docker/worker.Dockerfile deploy/docker/connect.Dockerfile
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

type image struct {
	File       string            `json:"file"`
	Bases      []string          `json:"bases"`
	Args       map[string]string `json:"args"`
	Copied     []string          `json:"copied"`
	User       string            `json:"user"`
	Entrypoint []string          `json:"entrypoint"`
	Cmd        []string          `json:"cmd"`
	ShellForm  bool              `json:"shell_form"` // an entrypoint or command run through /bin/sh -c
}

func inspect(path string) (*image, []string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		return nil, nil, err
	}
	var warnings []string
	for _, w := range res.Warnings {
		warnings = append(warnings, w.Short)
	}
	lint := linter.New(&linter.Config{Warn: func(rule, _, _, msg string, loc []parser.Range) {
		line := 0
		if len(loc) > 0 {
			line = loc[0].Start.Line
		}
		warnings = append(warnings, fmt.Sprintf("line %d: %s: %s", line, rule, msg))
	}})
	stages, metaArgs, err := instructions.Parse(res.AST, lint)
	if err != nil {
		return nil, nil, err
	}
	out := &image{File: path, Args: map[string]string{}}
	addArgs := func(args []instructions.KeyValuePairOptional) {
		for _, a := range args {
			out.Args[a.Key] = a.ValueString()
		}
	}
	for _, a := range metaArgs {
		addArgs(a.Args)
	}
	for _, stage := range stages {
		out.Bases = append(out.Bases, stage.BaseName)
		for _, command := range stage.Commands {
			switch c := command.(type) {
			case *instructions.ArgCommand:
				addArgs(c.Args)
			case *instructions.CopyCommand:
				if c.From == "" {
					out.Copied = append(out.Copied, c.SourcePaths...)
				}
			case *instructions.AddCommand:
				out.Copied = append(out.Copied, c.SourcePaths...)
			case *instructions.UserCommand:
				out.User = c.User
			case *instructions.EntrypointCommand:
				out.Entrypoint, out.ShellForm = c.CmdLine, out.ShellForm || c.PrependShell
			case *instructions.CmdCommand:
				out.Cmd, out.ShellForm = c.CmdLine, out.ShellForm || c.PrependShell
			}
		}
	}
	return out, warnings, nil
}

func main() {
	var images []*image
	failed := false
	for _, path := range os.Args[1:] {
		img, warnings, err := inspect(path)
		if err != nil {
			fmt.Printf("FAIL %s: %v\n", path, err)
			failed = true
			continue
		}
		for _, w := range warnings {
			fmt.Printf("FAIL %s: %s\n", path, w)
			failed = true
		}
		images = append(images, img)
	}
	if failed {
		os.Exit(1)
	}
	text, _ := json.MarshalIndent(images, "", "  ")
	fmt.Println(string(text))
}
