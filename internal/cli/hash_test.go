package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"testing"
	"testing/iotest"
)

func TestPipeCopy(t *testing.T) {
	for _, size := range []int{0, 1, pipeBufSize - 1, pipeBufSize, pipeBufSize + 1, 3*pipeBufSize + 17, 7 * pipeBufSize} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			data := make([]byte, size)
			for i := range data {
				data[i] = byte(i * 31 >> 3)
			}
			var got bytes.Buffer
			// HalfReader makes reads short, as a pipe's would be.
			if err := pipeCopy(&got, iotest.HalfReader(bytes.NewReader(data))); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Bytes(), data) {
				t.Errorf("copied %d bytes, differing from the %d read", got.Len(), size)
			}
		})
	}
}

func TestPipeCopyErrors(t *testing.T) {
	errRead := errors.New("read failed")
	r := io.MultiReader(bytes.NewReader(make([]byte, 2*pipeBufSize+5)), iotest.ErrReader(errRead))
	if err := pipeCopy(io.Discard, r); !errors.Is(err, errRead) {
		t.Errorf("pipeCopy with a failing reader = %v, want %v", err, errRead)
	}
	errWrite := errors.New("write failed")
	if err := pipeCopy(failingWriter{errWrite}, bytes.NewReader(make([]byte, 5*pipeBufSize))); !errors.Is(err, errWrite) {
		t.Errorf("pipeCopy with a failing writer = %v, want %v", err, errWrite)
	}
}

type failingWriter struct{ err error }

func (f failingWriter) Write([]byte) (int, error) { return 0, f.err }
