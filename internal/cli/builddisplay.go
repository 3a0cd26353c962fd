package cli

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	storecopy "ferry/internal/copy"
	"ferry/internal/remote"
	"ferry/nix/storepath"
	"ferry/store"
)

// buildDisplay is ferry build --builders' live display on a terminal: a
// block at the bottom of the screen with the counts (done of all,
// running, queued), the bytes in flight, and one line per machine with
// its running builds and how long each has run. Build logs and messages
// go above it (logWriter); it is redrawn ten times a second and, when
// the run ends, replaced by one summary line.
type buildDisplay struct {
	mu      sync.Mutex
	w       io.Writer
	names   map[string]string // machine URI → display name
	order   []string          // machines in the machines file's order
	running map[string]map[storepath.Path]time.Time
	queued  int
	done    int
	total   int
	failed  int
	copies  map[*copyCounter]bool
	sent    uint64
	drawn   int // lines of the block on the screen
	width   int
	start   time.Time
	stop    chan struct{}
	stopped chan struct{}
}

func newBuildDisplay(w io.Writer, names map[string]string, order []string, width int) *buildDisplay {
	d := &buildDisplay{w: w, names: names, order: order, width: width, running: map[string]map[storepath.Path]time.Time{},
		copies: map[*copyCounter]bool{}, start: time.Now(), stop: make(chan struct{}), stopped: make(chan struct{})}
	go func() {
		defer close(d.stopped)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				d.mu.Lock()
				d.redraw()
				d.mu.Unlock()
			case <-d.stop:
				return
			}
		}
	}()
	return d
}

var _ remote.Progress = (*buildDisplay)(nil)

func (d *buildDisplay) Started(drv storepath.Path, machine string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.running[machine] == nil {
		d.running[machine] = map[storepath.Path]time.Time{}
	}
	d.running[machine][drv] = time.Now()
}

func (d *buildDisplay) Finished(drv storepath.Path, machine, status string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.running[machine], drv)
	if status == "failed" {
		d.failed++
	}
}

func (d *buildDisplay) Counts(queued, running, done, total int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.queued, d.done, d.total = queued, done, total
}

// Copying counts a copy's bytes for the display.
func (d *buildDisplay) Copying(drv storepath.Path, machine string) storecopy.Progress {
	c := &copyCounter{d: d}
	d.mu.Lock()
	d.copies[c] = true
	d.mu.Unlock()
	return c
}

// copyCounter is one running copy's share of the bytes in flight.
type copyCounter struct {
	d            *buildDisplay
	total, wrote uint64
}

func (c *copyCounter) Start(paths int, bytes uint64) {
	c.d.mu.Lock()
	c.total = bytes
	c.d.mu.Unlock()
}
func (c *copyCounter) Sending(*store.PathInfo) {}
func (c *copyCounter) Wrote(n int) {
	c.d.mu.Lock()
	c.wrote += uint64(n)
	c.d.sent += uint64(n)
	c.d.mu.Unlock()
}
func (c *copyCounter) Added(info *store.PathInfo) {
	c.d.mu.Lock()
	if c.wrote >= c.total {
		delete(c.d.copies, c)
	}
	c.d.mu.Unlock()
}

// lines is the block as it stands.
func (d *buildDisplay) lines() []string {
	var inFlight uint64
	for c := range d.copies {
		if c.wrote < c.total {
			inFlight += c.total - c.wrote
		} else {
			delete(d.copies, c)
		}
	}
	running := 0
	for _, m := range d.running {
		running += len(m)
	}
	head := fmt.Sprintf("[%d/%d done, %d running, %d queued", d.done, d.total, running, d.queued)
	if d.failed > 0 {
		head += fmt.Sprintf(", %d failed", d.failed)
	}
	head += fmt.Sprintf(", %s in flight, %s sent] %s", humanBytes(inFlight), humanBytes(d.sent), time.Since(d.start).Truncate(time.Second))
	ls := []string{head}
	for _, m := range d.order {
		builds := d.running[m]
		if len(builds) == 0 {
			continue
		}
		type b struct {
			name string
			t    time.Time
		}
		var bs []b
		for p, t := range builds {
			name := p.Name()
			bs = append(bs, b{strings.TrimSuffix(name, ".drv"), t})
		}
		sort.Slice(bs, func(i, j int) bool {
			return bs[i].t.Before(bs[j].t) || bs[i].t.Equal(bs[j].t) && bs[i].name < bs[j].name
		})
		parts := make([]string, len(bs))
		for i, x := range bs {
			parts[i] = fmt.Sprintf("%s (%s)", x.name, time.Since(x.t).Truncate(time.Second))
		}
		ls = append(ls, "  "+d.names[m]+": "+strings.Join(parts, ", "))
	}
	for i, l := range ls {
		if d.width > 0 && len(l) > d.width-1 {
			ls[i] = l[:d.width-4] + "..."
		}
	}
	return ls
}

// clear erases the block; the cursor ends where it began.
func (d *buildDisplay) clear() {
	if d.drawn == 0 {
		return
	}
	// The cursor rests at the end of the block's last line.
	fmt.Fprintf(d.w, "\r\033[2K")
	for i := 1; i < d.drawn; i++ {
		fmt.Fprintf(d.w, "\033[1A\033[2K")
	}
	d.drawn = 0
}

func (d *buildDisplay) redraw() {
	d.clear()
	ls := d.lines()
	fmt.Fprint(d.w, strings.Join(ls, "\n"))
	d.drawn = len(ls)
}

// logWriter is where build logs and messages go while the block is up.
func (d *buildDisplay) logWriter() io.Writer { return displayLog{d} }

type displayLog struct{ d *buildDisplay }

func (l displayLog) Write(p []byte) (int, error) {
	d := l.d
	d.mu.Lock()
	defer d.mu.Unlock()
	d.clear()
	n, err := d.w.Write(p)
	if len(p) > 0 && p[len(p)-1] != '\n' {
		fmt.Fprintln(d.w)
	}
	d.redraw()
	return n, err
}

// finish replaces the block with a summary line.
func (d *buildDisplay) finish() {
	close(d.stop)
	<-d.stopped
	d.mu.Lock()
	defer d.mu.Unlock()
	d.clear()
	line := fmt.Sprintf("%d of %d derivations done in %s, %s sent", d.done, d.total, time.Since(d.start).Truncate(10*time.Millisecond), humanBytes(d.sent))
	if d.failed > 0 {
		line += fmt.Sprintf(", %d failed", d.failed)
	}
	fmt.Fprintln(d.w, line)
}
