package nar

import (
	"bytes"
	"path/filepath"
	"testing"
)

// TestDumpWithoutDirentType walks as on a file system that leaves d_type
// unknown, which makes Dump lstat each entry.
func TestDumpWithoutDirentType(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tree")
	mixedTree(t, dir)
	statEveryEntry = true
	defer func() { statEveryEntry = false }()
	var got bytes.Buffer
	must(t, Dump(&got, dir))
	if want := refDump(t, dir); !bytes.Equal(got.Bytes(), want) {
		t.Errorf("Dump differs from the reference (%d vs %d bytes)", got.Len(), len(want))
	}
}
