package buildhook

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"ferry/internal/machines"
)

// Nix's verbosity levels (src/libutil/logging.hh@2.8.0); the hook's
// argv[1] is one of them.
const (
	LvlError     = 0
	LvlWarn      = 1
	LvlNotice    = 2
	LvlInfo      = 3
	LvlTalkative = 4
	LvlChatty    = 5
	LvlDebug     = 6
	LvlVomit     = 7
)

// Nix's colours in messages (src/libutil/ansicolor.hh@2.8.0): hintformat
// puts every argument of a message in ANSI_WARNING; the parent strips
// them when its stderr is not a terminal.
const (
	ansiNormal  = "\x1b[0m"
	ansiWarning = "\x1b[35;1m"
	ansiRed     = "\x1b[31;1m"
)

// hl is an argument of a message, highlighted as hintformat does.
func hl(s string) string { return ansiWarning + s + ansiNormal }

// logger writes what build-remote's JSON logger writes on the hook's
// stderr (src/libutil/logging.cc@2.8.0 JSONLogger): one
// "@nix {json}" line per message or activity, the keys in sorted order
// as nlohmann's json prints them. Nix's parent shows each at its level
// (handleJSONLogMessage); the hook itself drops messages above its
// verbosity, as printMsg does.
type logger struct {
	mu        sync.Mutex
	w         io.Writer
	verbosity int
	nextID    uint64
}

func newLogger(w io.Writer, verbosity int) *logger {
	// Nix numbers activities from getpid() << 32.
	return &logger{w: w, verbosity: verbosity, nextID: uint64(os.Getpid()) << 32}
}

func (l *logger) write(fields map[string]any) {
	var b bytes.Buffer
	b.WriteString("@nix ")
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(fields); err != nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.w.Write(b.Bytes())
}

// msg is printMsg(level, text).
func (l *logger) msg(level int, text string) {
	if level > l.verbosity {
		return
	}
	l.write(map[string]any{"action": "msg", "level": level, "msg": text})
}

// errorInfo is logError of an Error: how build-remote's exception
// handler (src/libmain/shared.cc@2.8.0 handleExceptions) reports what
// made it fail, "error: " in red before the message.
func (l *logger) errorInfo(text string) {
	l.write(map[string]any{"action": "msg", "level": LvlError, "msg": ansiRed + "error:" + ansiNormal + " " + text,
		"raw_msg": text, "line": nil, "column": nil, "file": nil})
}

// activity starts an activity of type actUnknown and returns its stop.
func (l *logger) activity(level int, text string) func() {
	l.mu.Lock()
	id := l.nextID
	l.nextID++
	l.mu.Unlock()
	l.write(map[string]any{"action": "start", "id": id, "level": level, "type": 0, "text": text})
	return func() { l.write(map[string]any{"action": "stop", "id": id}) }
}

// NoMachineMessage is build-remote's warning when no machine can take a
// derivation now (src/build-remote/build-remote.cc@2.8.0): the
// derivation's name (its store path without the directory), the system
// and features it needs, and every machine listed with its systems, max
// jobs and features, highlighted as Nix highlights them.
func NoMachineMessage(drvName, system string, features []string, ms []*machines.Machine) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Failed to find a machine for remote build!\nderivation: %s\nrequired (system, features): (%s, %s)\n%s available machines:\n(systems, maxjobs, supportedFeatures, mandatoryFeatures)",
		hl(drvName), hl(system), hl(strings.Join(set(features), ", ")), hl(fmt.Sprint(len(ms))))
	for _, m := range ms {
		fmt.Fprintf(&b, "\n(%s, %s, %s, %s)", hl(strings.Join(m.Systems, ", ")), hl(fmt.Sprint(m.MaxJobs)),
			hl(strings.Join(m.SupportedFeatures, ", ")), hl(strings.Join(m.MandatoryFeatures, ", ")))
	}
	return b.String()
}
