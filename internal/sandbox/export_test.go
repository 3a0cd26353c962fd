//go:build linux

package sandbox

import "os"

// noUserNSEnv makes a test binary's sandboxes run without a user namespace
// (root only), as on machines where max_user_namespaces is 0.
const noUserNSEnv = "FERRY_SANDBOX_TEST_NO_USERNS"

func init() {
	if os.Getenv(noUserNSEnv) == "1" {
		disableUserNS = true
	}
}
