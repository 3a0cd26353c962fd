package schedd

import (
	"path/filepath"
	"time"

	"ferry/internal/hookapi"
	"ferry/nix/storepath"
)

// SocketName is the socket's file name in the state directory.
const SocketName = "ferry-scheduler.sock"

// SocketPath is the scheduler's socket in stateDir (for a client store
// rooted at DIR: DIR/nix/var/nix/ferry-scheduler.sock).
func SocketPath(stateDir string) string { return filepath.Join(stateDir, SocketName) }

// Protocol is the version a client and the daemon speak; a request of
// another version is refused with an error message.
const Protocol = 1

// Request is one line a client sends: Op is "try", "build", "release" or
// "status", with Try or Build set for the first two.
type Request struct {
	V     int                   `json:"v"`
	Op    string                `json:"op"`
	Try   *hookapi.TryRequest   `json:"try,omitempty"`
	Build *hookapi.BuildRequest `json:"build,omitempty"`
}

// Response is one line the daemon sends. A "try" gets Try; a "build" gets
// any number of Log lines (without their newline), then Build; a
// "release" gets Released; a "status" gets Status. Error, instead, is the
// daemon refusing the request (a protocol error, a store it cannot open).
type Response struct {
	Try      *hookapi.TryReply   `json:"try,omitempty"`
	Log      *string             `json:"log,omitempty"`
	Build    *hookapi.BuildReply `json:"build,omitempty"`
	Released bool                `json:"released,omitempty"`
	Status   *Status             `json:"status,omitempty"`
	Error    string              `json:"error,omitempty"`
}

// Status is what "ferry status" shows.
type Status struct {
	PID      int             `json:"pid"`
	Started  time.Time       `json:"started"`
	Now      time.Time       `json:"now"`
	Queue    int             `json:"queue"` // Try requests waiting for a slot
	Clients  int             `json:"clients"`
	Machines []MachineStatus `json:"machines"`
	Running  []RunningBuild  `json:"running"`
	Recent   []Failure       `json:"recent"` // newest last
}

// MachineStatus is one machine of the pool.
type MachineStatus struct {
	URI       string        `json:"uri"`
	Name      string        `json:"name"`
	Systems   []string      `json:"systems"`
	MaxJobs   int           `json:"maxJobs"`
	InUse     int           `json:"inUse"`
	Sessions  int           `json:"sessions"` // open and idle
	Down      bool          `json:"down"`
	RetryIn   time.Duration `json:"retryIn"` // while Down
	Failures  int           `json:"failures"`
	LastError string        `json:"lastError,omitempty"`
	Started   uint64        `json:"started"`
	Succeeded uint64        `json:"succeeded"`
	Failed    uint64        `json:"failed"`
}

// RunningBuild is a build in flight.
type RunningBuild struct {
	DrvPath storepath.Path `json:"drvPath"`
	Machine string         `json:"machine"`
	Store   string         `json:"store"`
	Started time.Time      `json:"started"`
	// journaled: the state file holds it (Status shows only those, so
	// that what status reports survives a crash).
	journaled bool
}

// Failure is a build that failed or was interrupted, or a machine that
// failed.
type Failure struct {
	Time    time.Time      `json:"time"`
	DrvPath storepath.Path `json:"drvPath,omitempty"`
	Machine string         `json:"machine"`
	Message string         `json:"message"`
}
