package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	storecopy "ferry/internal/copy"
	"ferry/internal/settings"
	"ferry/nix/storepath"
	"ferry/store"
)

func init() {
	register(&command{name: "copy", args: "--to URI | --from URI [--include-outputs] [--no-check-sigs] [--json] PATH...",
		summary: "copy the closure of paths between stores (as nix copy), race-free and pipelined", run: cmdCopy})
}

type copyFlags struct {
	from, to       string
	includeOutputs bool
	noCheckSigs    bool
	json           bool
	connectTimeout time.Duration
}

func cmdCopy(ctx context.Context, e *Env, args []string) error {
	fs := newFlags(e, "copy")
	var f copyFlags
	fs.StringVar(&f.from, "from", "", "the store to copy from (default: --store)")
	fs.StringVar(&f.to, "to", "", "the store to copy to (default: --store)")
	fs.BoolVar(&f.includeOutputs, "include-outputs", false, "also copy the outputs of the derivations in the closure")
	fs.BoolVar(&f.noCheckSigs, "no-check-sigs", false, "do not require signatures on paths copied into a local store")
	fs.BoolVar(&f.json, "json", false, "print a JSON summary (paths and bytes copied, skipped, seconds)")
	fs.DurationVar(&f.connectTimeout, "connect-timeout", 0, "how long a remote may take to answer (default 10s; a URI's connect-timeout= wins)")
	ops, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if f.from == "" && f.to == "" {
		return usagef("copy needs --to URI or --from URI")
	}
	if len(ops) == 0 {
		return usagef("copy needs at least one PATH")
	}
	if f.connectTimeout > 0 {
		e.ConnectTimeout = f.connectTimeout
	}
	return runCopy(ctx, e, &f, ops)
}

// copySummary is what --json prints.
type copySummary struct {
	From    string  `json:"from"`
	To      string  `json:"to"`
	Copied  int     `json:"copied"`
	Bytes   uint64  `json:"bytes"`
	Skipped int     `json:"skipped"`
	Seconds float64 `json:"seconds"`
}

func runCopy(ctx context.Context, e *Env, f *copyFlags, args []string) error {
	conf, err := settings.Load(nil)
	if err != nil {
		return err
	}
	fromURI, toURI := f.from, f.to
	if fromURI == "" {
		fromURI = e.Store
	}
	if toURI == "" {
		toURI = e.Store
	}
	// On a terminal the stores' messages go through the progress display,
	// so they stand above the bar instead of on it.
	var bar *copyProgress
	storeEnv := e
	if isTerminal(e.Stderr) && !f.json {
		bar = newCopyProgress(e.Stderr)
		withBar := *e
		withBar.Stderr = bar.logWriter()
		storeEnv = &withBar
	}
	src, err := openStore(ctx, storeEnv, conf, fromURI, true)
	if err != nil {
		return err
	}
	defer src.Close()
	paths := make([]storepath.Path, 0, len(args))
	for _, a := range args {
		p, err := src.Dir().Parse(a)
		if err != nil {
			return err
		}
		paths = append(paths, p)
	}
	dst, err := openStore(ctx, storeEnv, conf, toURI, true)
	if err != nil {
		return err
	}
	opts := &storecopy.Options{IncludeOutputs: f.includeOutputs}
	if check, err := signatureCheck(dst, conf, f.noCheckSigs); err != nil {
		dst.Close()
		return err
	} else {
		opts.CheckPath = check
	}
	if bar != nil {
		opts.Progress = bar
	}
	res, err := storecopy.Copy(ctx, src, dst, paths, opts)
	if bar != nil {
		bar.finish()
	}
	if cerr := dst.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close %s: %w", toURI, cerr)
	}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("interrupted (only complete paths were made valid; copy again to send the rest)")
		}
		return fmt.Errorf("copy to %s: %w", displayURI(toURI), err)
	}
	if f.json {
		enc := json.NewEncoder(e.Stdout)
		enc.SetEscapeHTML(false)
		return enc.Encode(copySummary{From: displayURI(fromURI), To: displayURI(toURI), Copied: len(res.Copied), Bytes: res.Bytes, Skipped: res.Skipped, Seconds: res.Seconds})
	} else if e.Verbose {
		fmt.Fprintf(e.Stderr, "copied %d paths (%d bytes), %d already there, in %.2fs\n", len(res.Copied), res.Bytes, res.Skipped, res.Seconds)
	}
	return nil
}

func displayURI(uri string) string {
	if uri == "" {
		return "the default store"
	}
	return uri
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// copyProgress is the live display of a copy on a terminal: one line with
// the bar, the bytes sent of the total and the rate (progressbar), then the
// paths the destination has accepted of the total, the time left and the
// path being sent. The line is cut to the terminal's width so that it never
// wraps (a wrapped line is redrawn one line lower each time). It is first
// drawn when the first path is sent, after what the sessions print at -v,
// and it ends as a summary line.
type copyProgress struct {
	// mu serialises drawing: the copy's calls and the log lines of
	// logWriter, which come from other goroutines (a remote's stderr).
	mu         sync.Mutex
	w          io.Writer
	bar        *progressbar.ProgressBar
	paths      int       // paths to send
	done       int       // paths the destination has accepted
	totalBytes uint64    // their NAR bytes
	sent       uint64    // NAR bytes sent so far
	current    string    // the name of the path being sent
	barWidth   int       // the bar's width, chosen at Start
	start      time.Time // Start
	firstByte  time.Time // the first Sending, where the rate is counted from
	described  time.Time // the last describe
}

const (
	// progressRefresh is how often the time left is recomputed.
	progressRefresh = 250 * time.Millisecond
	// progressFixed is the width of the line without the bar and the
	// description: the percentage, the bar's ends, "(1023 MiB/1023 MiB,
	// 1023 MiB/s)" at the most, the spaces between, and a column kept
	// free so the cursor never sits past the last one.
	progressFixed = 43
	// progressBar is the bar's width when the terminal has room;
	// progressMinBar when it has not.
	progressBar, progressMinBar = 30, 10
	// progressRoom is what the bar leaves the description at least, if
	// the terminal has room for it.
	progressRoom = 40
)

func newCopyProgress(w io.Writer) *copyProgress { return &copyProgress{w: w} }

func (c *copyProgress) Start(paths int, bytes uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.paths, c.totalBytes = paths, bytes
	c.start = time.Now()
	if paths == 0 {
		return
	}
	c.barWidth = min(max(c.termWidth()-progressFixed-progressRoom, progressMinBar), progressBar)
	total := int64(bytes)
	if total <= 0 {
		total = 1 // progressbar wants a positive total; finish shows the truth
	}
	c.bar = progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(c.w),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowCount(),
		progressbar.OptionShowTotalBytes(true),
		progressbar.OptionUseIECUnits(true),
		progressbar.OptionSetPredictTime(false), // the time left is in the description
		progressbar.OptionSetElapsedTime(false),
		progressbar.OptionShowDescriptionAtLineEnd(),
		progressbar.OptionSetWidth(c.barWidth), // narrowed by progressbar if it must
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionSetRenderBlankState(false),
		progressbar.OptionUseANSICodes(true),
	)
}

// describe sets the text after the bar, cut to what the terminal leaves.
func (c *copyProgress) describe() {
	now := time.Now()
	c.described = now
	d := fmt.Sprintf("%d/%d paths", c.done, c.paths)
	if !c.firstByte.IsZero() && c.sent > 0 && c.sent < c.totalBytes {
		if el := now.Sub(c.firstByte); el >= 500*time.Millisecond {
			left := time.Duration(float64(el) * float64(c.totalBytes-c.sent) / float64(c.sent))
			if left < time.Second {
				d += ", ETA <1s"
			} else {
				d += ", ETA " + left.Round(time.Second).String()
			}
		}
	}
	if c.current != "" {
		d += ": " + c.current
	}
	c.bar.Describe(cut(d, c.descriptionWidth()))
}

// descriptionWidth is how wide the description may be: what the
// terminal leaves beside the bar, or, on a terminal made too narrow for
// that, beside none (progressbar then narrows the bar to fit).
func (c *copyProgress) descriptionWidth() int {
	width := c.termWidth()
	if n := width - progressFixed - c.barWidth; n >= 12 {
		return n
	}
	return max(width-progressFixed, 0)
}

// termWidth is the width of the terminal the display is on (80 if unknown).
func (c *copyProgress) termWidth() int { return terminalWidth(c.w) }

// terminalWidth is the width of the terminal w is, else 80.
func terminalWidth(w io.Writer) int {
	if f, ok := w.(*os.File); ok {
		if w, _, err := term.GetSize(int(f.Fd())); err == nil && w > 0 {
			return w
		}
	}
	return 80
}

// cut shortens s to n columns, ending it with "…" if it was longer.
func cut(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	if n <= 0 {
		return ""
	}
	return string(r[:n-1]) + "…"
}

func (c *copyProgress) Sending(info *store.PathInfo) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.firstByte.IsZero() {
		c.firstByte = time.Now()
	}
	c.current = info.Path.Name()
	c.describe()
}

func (c *copyProgress) Wrote(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sent += uint64(n)
	c.bar.Add(n)
	if time.Since(c.described) >= progressRefresh {
		c.describe()
	}
}

func (c *copyProgress) Added(info *store.PathInfo) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.done++
	c.describe()
}

// finish replaces the bar with a summary line: what was copied, how fast,
// and, after a failure, of how much.
func (c *copyProgress) finish() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bar == nil {
		return
	}
	el := time.Since(c.start)
	line := fmt.Sprintf("copied %d/%d paths, %s", c.done, c.paths, humanBytes(c.sent))
	if c.done < c.paths {
		line += " of " + humanBytes(c.totalBytes)
	}
	line += " in " + el.Round(10*time.Millisecond).String()
	if s := el.Seconds(); s > 0 {
		line += fmt.Sprintf(" (%s/s)", humanBytes(uint64(float64(c.sent)/s)))
	}
	// Back to the start of the bar's line, cleared.
	fmt.Fprintf(c.w, "\r\033[2K%s\n", line)
}

// logWriter returns a writer for what else goes to the terminal while the
// bar is up (a remote's stderr, -v traces): the bar's line is cleared, the
// text written, and the bar drawn again below it.
func (c *copyProgress) logWriter() io.Writer { return progressLog{c} }

type progressLog struct{ c *copyProgress }

func (l progressLog) Write(p []byte) (int, error) {
	c := l.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bar == nil {
		return c.w.Write(p)
	}
	fmt.Fprint(c.w, "\r\033[2K")
	n, err := c.w.Write(p)
	if len(p) > 0 && p[len(p)-1] != '\n' {
		fmt.Fprintln(c.w)
	}
	c.bar.RenderBlank()
	return n, err
}

// humanBytes writes n with IEC units, as the bar does.
func humanBytes(n uint64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v, unit := float64(n)/1024, "KiB"
	for _, u := range []string{"MiB", "GiB", "TiB", "PiB", "EiB"} {
		if v < 1024 {
			break
		}
		v, unit = v/1024, u
	}
	return fmt.Sprintf("%.1f %s", v, unit)
}
