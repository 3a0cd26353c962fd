package build

import (
	"errors"
	"io"
	"sync"
	"time"
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
