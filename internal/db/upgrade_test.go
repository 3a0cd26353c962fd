package db_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"ferry/internal/db"
	"ferry/internal/localstore"
	"ferry/internal/nixtest"
	"ferry/nix/storepath"
)

// oldRow is a path registered in the old databases: it must survive the
// upgrade.
const oldRow = "/nix/store/ab3li50xq0nl4q5lxdyinb8w8y13my9s-f"

// makeOldStore builds, with the sqlite3 CLI as an old Nix would have, the
// state of a chroot store at schema version v (6 to 9): Nix 1.11's schema,
// plus the upgrade steps below v, and one registered path.
func makeOldStore(t *testing.T, root string, v int) {
	t.Helper()
	dbDir := filepath.Join(root, "nix/var/nix/db")
	if err := os.MkdirAll(dbDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "nix/store"), 0o755); err != nil {
		t.Fatal(err)
	}
	schema, err := os.ReadFile("testdata/schema7.sql")
	if err != nil {
		t.Fatal(err)
	}
	script := string(schema)
	for _, step := range []struct {
		below int
		file  string
	}{{8, "upgrade_8"}, {9, "upgrade_9"}} {
		if v >= step.below {
			b, err := os.ReadFile("sql/" + step.file + ".sql")
			if err != nil {
				t.Fatal(err)
			}
			script += "\n" + string(b)
		}
	}
	script += fmt.Sprintf("\ninsert into ValidPaths (path, hash, registrationTime, narSize) values ('%s', 'sha256:%s', 1, 112);\n",
		oldRow, strings.Repeat("0", 64))
	if v < 9 {
		script += "insert into FailedPaths values ('/nix/store/00000000000000000000000000000000-x', 1);\n"
	}
	cmd := exec.Command("sqlite3", filepath.Join(dbDir, "db.sqlite"))
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sqlite3: %v\n%s", err, out)
	}
	if err := os.WriteFile(filepath.Join(dbDir, "schema"), []byte(fmt.Sprint(v)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// dumpSchema is `sqlite3 db .schema` plus the settings a store relies on.
func dumpSchema(t *testing.T, root string) string {
	t.Helper()
	p := filepath.Join(root, "nix/var/nix/db/db.sqlite")
	out, err := exec.Command("sqlite3", p, ".schema", "pragma journal_mode;", "pragma user_version;").CombinedOutput()
	if err != nil {
		t.Fatalf("sqlite3: %v\n%s", err, out)
	}
	return string(out)
}

// nixOpen runs a real nix-store command on the chroot store root, which
// opens (and so upgrades) it.
func nixOpen(t *testing.T, root string, args ...string) ([]byte, []byte, error) {
	t.Helper()
	cmd := exec.Command("nix-store", append([]string{"--store", root}, args...)...)
	cmd.Env = nixtest.Env(t.TempDir())
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return []byte(stdout.String()), []byte(stderr.String()), err
}

// TestUpgradeMatchesNix upgrades the same old database with ferry and with
// real Nix 2.8, and requires the same schema text, schema file and data;
// then Nix must accept the store ferry upgraded.
func TestUpgradeMatchesNix(t *testing.T) {
	nixtest.Require(t, "sqlite3")
	nixtest.RequireNix(t)
	ctx := context.Background()
	for _, v := range []int{6, 7, 8, 9} {
		t.Run(fmt.Sprint("schema", v), func(t *testing.T) {
			ours, theirs := t.TempDir(), t.TempDir()
			makeOldStore(t, ours, v)
			makeOldStore(t, theirs, v)

			s, err := localstore.Open(ours, nil)
			if err != nil {
				t.Fatal(err)
			}
			info, err := s.QueryPathInfo(ctx, storepath.Path(oldRow))
			if err != nil {
				t.Fatalf("old row after upgrade: %v", err)
			}
			if info.NarSize != 112 || info.Ultimate || info.CA.String() != "" {
				t.Errorf("old row after upgrade: %+v", info)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if _, stderr, err := nixOpen(t, theirs, "-q", "--hash", oldRow); err != nil {
				t.Fatalf("nix-store on schema %d: %v\n%s", v, err, stderr)
			}

			a, b := dumpSchema(t, ours), dumpSchema(t, theirs)
			if a != b {
				t.Errorf("schema after upgrade differs:\nferry:\n%s\nnix:\n%s", a, b)
			}
			if !strings.Contains(a, "ca text);") || strings.Contains(a, "FailedPaths") || !strings.Contains(a, "\nwal\n") {
				t.Errorf("not a schema-10 database in WAL mode:\n%s", a)
			}
			for _, root := range []string{ours, theirs} {
				b, err := os.ReadFile(filepath.Join(root, "nix/var/nix/db/schema"))
				if err != nil || string(b) != "10" {
					t.Errorf("%s: schema file %q, %v", root, b, err)
				}
			}
			// Nix accepts ferry's result as a current store.
			out, stderr, err := nixOpen(t, ours, "-q", "--hash", oldRow)
			if err != nil {
				t.Fatalf("nix-store on the store ferry upgraded: %v\n%s", err, stderr)
			}
			if got := strings.TrimSpace(string(out)); got != "sha256:"+strings.Repeat("0", 52) {
				t.Errorf("nix-store -q --hash = %q", got)
			}
			// And ferry opens it again without upgrading.
			s, err = localstore.Open(ours, nil)
			if err != nil {
				t.Fatal(err)
			}
			s.Close()
		})
	}
}

// TestRefusedSchemas checks that ferry refuses what Nix 2.8 refuses, with
// Nix's message, and leaves the store alone.
func TestRefusedSchemas(t *testing.T) {
	nixtest.RequireNix(t)
	for _, tc := range []struct {
		schema string
		want   string // in both ferry's and Nix's error
	}{
		{"11", "current Nix store schema is version 11, but I only support 10"},
		{"5", "database in flat file format"},
		{"3", "database in Berkeley DB format"},
		{"-1", "database in Berkeley DB format"},
		{"10\n", "is corrupt"},
		{"ten", "is corrupt"},
	} {
		t.Run(tc.schema, func(t *testing.T) {
			root := t.TempDir()
			dbDir := filepath.Join(root, "nix/var/nix/db")
			os.MkdirAll(dbDir, 0o755)
			schemaFile := filepath.Join(dbDir, "schema")
			os.WriteFile(schemaFile, []byte(tc.schema), 0o644)

			_, err := localstore.Open(root, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ferry: got %v, want %q", err, tc.want)
			}
			if tc.schema != "10\n" && tc.schema != "ten" && !errors.Is(err, db.ErrUnsupportedSchema) {
				t.Errorf("ferry's error %v is not ErrUnsupportedSchema", err)
			}
			if _, err := os.Stat(filepath.Join(dbDir, "db.sqlite")); err == nil {
				t.Error("ferry created a database")
			}
			if b, _ := os.ReadFile(schemaFile); string(b) != tc.schema {
				t.Errorf("schema file changed to %q", b)
			}
			_, stderr, err := nixOpen(t, root, "-q", "--hash", oldRow)
			if err == nil || !strings.Contains(string(stderr), tc.want) {
				t.Errorf("nix-store: %v\n%s\nwant %q", err, stderr, tc.want)
			}
		})
	}
}

// TestUpgradeFailsWithoutFailedPaths: an upgrade from schema 8 runs "drop
// table FailedPaths" like Nix, so a damaged schema-8 database without that
// table is an error, and the schema file stays at 8.
func TestUpgradeFailsWithoutFailedPaths(t *testing.T) {
	nixtest.Require(t, "sqlite3")
	root := t.TempDir()
	makeOldStore(t, root, 9)
	os.WriteFile(filepath.Join(root, "nix/var/nix/db/schema"), []byte("8"), 0o644)
	_, err := localstore.Open(root, nil)
	if err == nil || !strings.Contains(err.Error(), "FailedPaths") {
		t.Fatalf("got %v, want an error about FailedPaths", err)
	}
	if v, _ := db.ReadSchemaFile(filepath.Join(root, "nix/var/nix/db")); v != 8 {
		t.Errorf("schema file is %d after a failed upgrade", v)
	}
}
