package db

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
)

// MinSchemaVersion is the oldest schema Nix 2.8 upgrades (schema 6, the
// first SQLite database, from Nix 0.15 / 1.0). Older stores are refused
// (local-store.cc, LocalStore::LocalStore).
const MinSchemaVersion = 6

// ErrUnsupportedSchema is wrapped by CheckSchema's errors: the schema
// file names a version this Nix (2.8) neither uses nor upgrades.
var ErrUnsupportedSchema = errors.New("unsupported Nix store schema")

// schemaError keeps Nix's message as the text while letting callers test
// for ErrUnsupportedSchema.
type schemaError struct{ msg string }

func (e *schemaError) Error() string { return e.msg }
func (e *schemaError) Unwrap() error { return ErrUnsupportedSchema }

// CheckSchema returns Nix 2.8's error for a schema file version it
// refuses, and nil for 0 (a new store), SchemaVersion and the versions it
// upgrades (MinSchemaVersion up to SchemaVersion-1). The texts are Nix's.
func CheckSchema(v int) error {
	switch {
	case v > SchemaVersion:
		return &schemaError{fmt.Sprintf("current Nix store schema is version %d, but I only support %d", v, SchemaVersion)}
	case v == 0 || v >= MinSchemaVersion:
		return nil
	case v < 5:
		// Includes negative numbers, which Nix's string2Int<int> reads.
		return &schemaError{"Your Nix store has a database in Berkeley DB format,\n" +
			"which is no longer supported. To convert to the new format,\n" +
			"please upgrade Nix to version 0.12 first."}
	default:
		return &schemaError{"Your Nix store has a database in flat file format,\n" +
			"which is no longer supported. To convert to the new format,\n" +
			"please upgrade Nix to version 1.11 first."}
	}
}

// WriteSchemaFile writes the schema file of dbDir ("10", no newline, mode
// 0644) atomically.
func WriteSchemaFile(dbDir string) error {
	p := filepath.Join(dbDir, "schema")
	tmp := fmt.Sprintf("%s.tmp-%d", p, os.Getpid())
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(SchemaVersion)), 0o644); err != nil {
		return fmt.Errorf("write schema file: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write schema file: %w", err)
	}
	return nil
}

// maxSchemaFile bounds what ReadSchemaFile reads: a version number.
const maxSchemaFile = 64

// ReadSchemaFile returns the version in dbDir's schema file, or 0 if
// there is none. Like Nix's getSchema the whole file must be a decimal
// integer (no newline); anything else is "corrupt".
func ReadSchemaFile(dbDir string) (int, error) {
	return readVersionFile(filepath.Join(dbDir, "schema"))
}

// readVersionFile is Nix's getSchema on the file p.
func readVersionFile(p string) (int, error) {
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read schema file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSchemaFile+1))
	if err != nil {
		return 0, fmt.Errorf("read schema file: %w", err)
	}
	v, perr := strconv.Atoi(string(b))
	if perr != nil || len(b) > maxSchemaFile || (len(b) > 0 && b[0] == '+') {
		return 0, fmt.Errorf("read schema file: '%s' is corrupt", p)
	}
	return v, nil
}

// upgrade runs the steps of LocalStore::LocalStore (local-store.cc@2.8.0)
// from schema version from to SchemaVersion, each in its own transaction
// as Nix does. (The 6 → 7 step only clears immutable bits in the store
// directory; the caller does it, before opening the database.)
func (d *DB) upgrade(ctx context.Context, from int) error {
	if err := CheckSchema(from); err != nil {
		return err
	}
	for _, step := range []struct {
		below int
		file  string
	}{
		{8, "upgrade_8"},   // add ValidPaths.ultimate and ValidPaths.sigs
		{9, "upgrade_9"},   // drop FailedPaths
		{10, "upgrade_10"}, // add ValidPaths.ca
	} {
		if from >= step.below {
			continue
		}
		err := d.Write(ctx, func(tx *Tx) error {
			_, err := tx.tx.ExecContext(ctx, mustSQL(step.file))
			return err
		})
		if err != nil {
			return fmt.Errorf("upgrade schema %d to %d: %w", step.below-1, step.below, err)
		}
	}
	return nil
}
