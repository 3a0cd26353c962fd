package derivation_test

import (
	"fmt"

	"ferry/nix/derivation"
	"ferry/nix/storepath"
)

// A derivation as `derivation { … }` builds it, before Nix fills in the
// output paths.
func ExampleDerivation_FillOutputPaths() {
	d := &derivation.Derivation{
		Name:     "simple",
		Outputs:  map[string]derivation.Output{"out": {}},
		Platform: "x86_64-linux",
		Builder:  "/bin/sh",
		Args:     []string{"-c", "echo hello > $out"},
		Env:      map[string]string{"builder": "/bin/sh", "name": "simple", "system": "x86_64-linux"},
	}
	if err := d.FillOutputPaths(storepath.DefaultDir, nil, nil); err != nil {
		panic(err)
	}
	drvPath, _ := d.Path(storepath.DefaultDir)
	fmt.Println(d.Outputs["out"].Path)
	fmt.Println(drvPath)
	// Output:
	// /nix/store/94f9f6i31zwzwbf0kclq1naqxxi4c7v9-simple
	// /nix/store/3ghsl9sd83mc26i81adpa2fzf3yw4f68-simple.drv
}
