package nar_test

import (
	"bytes"
	"fmt"
	"io"
	"log"
	"os"

	"ferry/nix/nar"
)

func Example() {
	// Write a directory holding an executable script and a symlink to it.
	var buf bytes.Buffer
	w := nar.NewWriter(&buf)
	script := "#!/bin/sh\necho hi\n"
	for _, h := range []*nar.Header{
		{Type: nar.TypeDirectory},
		{Path: "bin", Type: nar.TypeDirectory},
		{Path: "bin/hi", Type: nar.TypeRegular, Executable: true, Size: int64(len(script))},
		{Path: "hello", Type: nar.TypeSymlink, LinkTarget: "bin/hi"},
	} {
		if err := w.WriteHeader(h); err != nil {
			log.Fatal(err)
		}
		if h.Type == nar.TypeRegular {
			io.WriteString(w, script)
		}
	}
	if err := w.Close(); err != nil {
		log.Fatal(err)
	}

	// Read it back.
	r := nar.NewReader(&buf)
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%q %v exec=%v size=%d target=%q\n", h.Path, h.Type, h.Executable, h.Size, h.LinkTarget)
	}
	// Output:
	// "" directory exec=false size=0 target=""
	// "bin" directory exec=false size=0 target=""
	// "bin/hi" regular exec=true size=18 target=""
	// "hello" symlink exec=false size=0 target="bin/hi"
}

func ExampleList() {
	data, err := os.ReadFile("testdata/small.nar")
	if err != nil {
		log.Fatal(err)
	}
	if err := nar.List(os.Stdout, bytes.NewReader(data), &nar.ListOptions{Long: true, Recursive: true}); err != nil {
		log.Fatal(err)
	}
	// Output:
	// -r--r--r--                    2 ./f
	// lrwxrwxrwx                    0 ./l -> f
}
