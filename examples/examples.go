// Package examples embeds ferry's example inputs: derivations in the JSON
// form of `nix show-derivation` (builder /bin/sh from busybox, system
// x86_64-linux) that "ferry demo" builds and the README uses, and a small
// file tree.
package examples

import "embed"

// FS holds the example derivations and the tree.
//
//go:embed *.json tree
var FS embed.FS

// Derivations lists the example derivations in dependency order.
var Derivations = []string{"hello.json", "chain-a.json", "chain-b.json", "chain-c.json", "greet.json"}

// Sources are the input sources the example derivations use: text objects
// (as builtins.toFile makes them) named by the key, with the contents of the
// file of the tree the value names. greet.json uses greeting.txt.
var Sources = map[string]string{"greeting.txt": "tree/greeting.txt"}
