// Package examples embeds ferry's example inputs: a small file tree for the
// format round trip and derivations (JSON form, builder /bin/sh from
// busybox) that "ferry demo" and the README use.
package examples

import "embed"

// FS holds everything under examples/ that the demo uses.
//
//go:embed tree
var FS embed.FS
