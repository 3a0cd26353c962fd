// Package hookapi is the contract between ferry build-hook (the program
// Nix runs for each remote build, internal/buildhook) and whatever places
// and runs the build: the long-lived ferry scheduler (internal/schedd),
// reached over a unix socket, or the hook's own in-process fallback when
// no scheduler runs. Both implement Scheduler.
//
// One Scheduler call pair serves one derivation, in the order of Nix's
// hook protocol (docs/protocol.md, the build hook): Try answers Nix's
// "try" with a Decision; after an accept, Nix sends the inputs and the
// wanted outputs, and Build copies the inputs to the chosen machine,
// builds there, copies the outputs back into the client's store, and
// streams the build log. Release ends the attempt (after Build, or
// instead of it when Nix's side went away), freeing the slot Try took.
package hookapi

import (
	"context"
	"errors"
	"io"
	"time"

	"ferry/nix/storepath"
)

// Decision is the hook's answer to one "try".
type Decision string

const (
	Accept             Decision = "accept"
	Decline            Decision = "decline"             // build locally (the local machine may, and no remote is better)
	DeclinePermanently Decision = "decline-permanently" // no machines at all: stop asking
	Postpone           Decision = "postpone"            // suitable machines exist but are all busy, and no local build
)

// TryRequest is Nix's "try" with what the hook knows of the client.
type TryRequest struct {
	// Store is the client's store URI (the "store" setting Nix sent,
	// "" for the default); outputs are copied back into it.
	Store string `json:"store"`
	// Builders is the "builders" setting Nix sent (machines format).
	Builders string `json:"builders"`
	// AmWilling says the local machine may build it now (Nix's
	// amWilling: local builds are below max-jobs).
	AmWilling bool           `json:"amWilling"`
	System    string         `json:"system"`
	DrvPath   storepath.Path `json:"drvPath"`
	Features  []string       `json:"features"` // requiredSystemFeatures
	// Settings are the build settings Nix sent that travel with the
	// build (max-silent-time, timeout, max-log-size, build-cores, ...),
	// by name as in nix.conf.
	Settings map[string]string `json:"settings,omitempty"`
}

// TryReply is the Decision and, for Accept, the machine's store URI
// (what the hook prints after "# accept").
type TryReply struct {
	Decision Decision `json:"decision"`
	Machine  string   `json:"machine,omitempty"`
	// Message, if set, is printed by the hook on stderr (for Decline:
	// why no machine fits, as Nix's "Failed to find a machine" table).
	Message string `json:"message,omitempty"`
}

// BuildRequest follows an Accept: Nix's inputs (the derivation's whole
// input closure) and wanted outputs (those not valid locally).
type BuildRequest struct {
	DrvPath       storepath.Path   `json:"drvPath"`
	Inputs        []storepath.Path `json:"inputs"`
	WantedOutputs []string         `json:"wantedOutputs"`
}

// BuildReply is how the remote build ended. A failure has Success false
// and Message says what failed, naming the derivation and the machine as
// Nix's build-remote does ("build of '…' on '…' failed: …"). When
// Success, the wanted outputs are valid in the client's store.
type BuildReply struct {
	Success  bool          `json:"success"`
	Message  string        `json:"message,omitempty"`
	Machine  string        `json:"machine"`
	Duration time.Duration `json:"duration"`
}

// ErrLost is wrapped by a Scheduler's error when its connection to the
// ferry scheduler broke (the scheduler stopped, crashed or was
// restarted): whatever it was doing may be asked again of another.
var ErrLost = errors.New("lost the connection to the ferry scheduler")

// Scheduler places and runs remote builds for the hook.
type Scheduler interface {
	// Try decides where req's derivation is built; with Accept it holds
	// a slot of the machine until Release.
	Try(ctx context.Context, req *TryRequest) (*TryReply, error)
	// Build runs the accepted build, writing the machine's build log to
	// log as it comes. An error is the scheduler's or the transport's,
	// not the build's (that is BuildReply.Message).
	Build(ctx context.Context, req *BuildRequest, log io.Writer) (*BuildReply, error)
	// Release ends the attempt and frees its slot. It is safe to call
	// more than once and without a Build.
	Release() error
}
