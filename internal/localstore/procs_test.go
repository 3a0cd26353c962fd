package localstore

import (
	"fmt"
	"os"
)

func runHelper(mode, root, arg string) int {
	fmt.Fprintln(os.Stderr, "unknown helper", mode)
	return 2
}
