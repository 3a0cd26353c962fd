package schedd

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"ferry/store"
)

// The limits reach the build by the names the hook sends (Nix's) and by
// the ones ferry build sends.
func TestBuildSettings(t *testing.T) {
	for _, tc := range []struct {
		in   map[string]string
		want store.BuildSettings
	}{
		{map[string]string{"max-silent-time": "5", "timeout": "7", "max-build-log-size": "1000", "repeat": "1", "enforce-determinism": "true", "keep-failed": "1"},
			store.BuildSettings{MaxSilentTime: 5 * time.Second, Timeout: 7 * time.Second, MaxLogSize: 1000, BuildRepeat: 1, EnforceDeterminism: true, KeepFailed: true}},
		{map[string]string{"build-timeout": "9", "max-log-size": "42", "keep-failed": "false"},
			store.BuildSettings{Timeout: 9 * time.Second, MaxLogSize: 42}},
		{map[string]string{}, store.BuildSettings{}},
	} {
		if diff := cmp.Diff(&tc.want, buildSettings(tc.in)); diff != "" {
			t.Errorf("buildSettings(%v) (-want +got):\n%s", tc.in, diff)
		}
	}
}
