package build

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/dsnet/compress/bzip2"
)

// errLogLimit is returned by logSink.Write once max-log-size is passed;
// the sandbox then kills the builder.
var errLogLimit = errors.New("build log exceeded max-log-size")

// logSink receives the builder's output: it forwards it to the caller's
// writer, remembers when output last arrived, counts it against
// max-log-size and keeps the last lines for the error message (Nix's
// handleChildOutput and logTail). It is safe for concurrent use.
type logSink struct {
	w        io.Writer // caller's log, may be nil
	maxSize  uint64    // 0: unlimited
	maxLines int

	mu       sync.Mutex // guards everything below
	size     uint64
	last     time.Time
	exceeded bool
	tail     []string
	line     []byte // the current line, with '\r' rewinding pos
	pos      int
}

func newLogSink(w io.Writer, maxSize uint64, maxLines int) *logSink {
	return &logSink{w: w, maxSize: maxSize, maxLines: maxLines, last: time.Now()}
}

func (l *logSink) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.last = time.Now()
	l.size += uint64(len(p))
	if l.maxSize != 0 && l.size > l.maxSize {
		l.exceeded = true
		return 0, errLogLimit
	}
	for _, c := range p {
		switch c {
		case '\r':
			l.pos = 0
		case '\n':
			l.flushLine()
		default:
			if l.pos < len(l.line) {
				l.line[l.pos] = c
			} else {
				l.line = append(l.line, c)
			}
			l.pos++
		}
	}
	if l.w != nil {
		if _, err := l.w.Write(p); err != nil {
			// The caller's log going away (a client disconnecting) ends
			// the build, as in Nix.
			return 0, err
		}
	}
	return len(p), nil
}

func (l *logSink) flushLine() {
	if l.maxLines > 0 {
		l.tail = append(l.tail, string(l.line))
		if len(l.tail) > l.maxLines {
			l.tail = l.tail[len(l.tail)-l.maxLines:]
		}
	}
	l.line = l.line[:0]
	l.pos = 0
}

// lastOutput is when the builder last wrote.
func (l *logSink) lastOutput() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last
}

func (l *logSink) limitExceeded() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.exceeded
}

// lines returns the log tail, the unfinished last line included.
func (l *logSink) lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.line) > 0 {
		l.flushLine()
	}
	return append([]string(nil), l.tail...)
}

// openLogFile creates the file the build log is kept in when
// keep-build-log is on, as Nix's DerivationGoal::openLogFile does when the
// builder starts (src/libstore/build/derivation-goal.cc@2.8.0):
// <log dir>/drvs/<first two characters of the .drv's base name>/<the rest>,
// bzip2-compressed at level 9 with ".bz2" appended when
// compress-build-log is on (the default), so that nix-store --read-log and
// nix log find it. The log of the other form, from an earlier build, is
// removed: Nix reads the plain one first, and it would hide this one. It
// returns nil when no log is kept.
func (b *builder) openLogFile() (io.WriteCloser, error) {
	if !b.s.KeepBuildLog {
		return nil, nil
	}
	base := b.drvPath.Base()
	dir := filepath.Join(b.st.Layout().LogDir, "drvs", base[:2])
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return nil, fmt.Errorf("create the build log of '%s': %w", b.drvPath, err)
	}
	name, other := filepath.Join(dir, base[2:]), filepath.Join(dir, base[2:]+".bz2")
	if b.s.CompressBuildLog {
		name, other = other, name
	}
	os.Remove(other)
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o666)
	if err != nil {
		return nil, fmt.Errorf("create the build log of '%s': %w", b.drvPath, err)
	}
	if !b.s.CompressBuildLog {
		return f, nil
	}
	zw, err := bzip2.NewWriter(f, &bzip2.WriterConfig{Level: bzip2.BestCompression})
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("create the build log of '%s': %w", b.drvPath, err)
	}
	return &bz2File{zw, f}, nil
}

// bz2File is a compressed log file: closing it ends the stream, then the
// file.
type bz2File struct {
	*bzip2.Writer
	f *os.File
}

func (z *bz2File) Close() error {
	err := z.Writer.Close()
	if cerr := z.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// keptLog writes the log to the kept log file and to w (which may be nil).
// A failing write to the file (a full disk) loses the rest of the file but
// not the build, whose own log w decides.
type keptLog struct {
	f    io.Writer
	ferr error
	w    io.Writer
}

func (k *keptLog) Write(p []byte) (int, error) {
	if k.ferr == nil {
		_, k.ferr = k.f.Write(p)
	}
	if k.w == nil {
		return len(p), nil
	}
	return k.w.Write(p)
}
