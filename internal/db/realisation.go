package db

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"ferry/nix/storepath"
)

// CASchemaVersion is the version of the ca-derivations tables Nix 2.8
// writes to <state>/db/ca-schema (nixCASchemaVersion in migrateCASchema,
// src/libstore/local-store.cc@2.8.0; docs/store.md §5.1).
const CASchemaVersion = 3

// ReadCASchemaFile returns the version in dbDir's ca-schema file, or 0 if
// there is none (the store has never been opened with ca-derivations).
func ReadCASchemaFile(dbDir string) (int, error) {
	v, err := readVersionFile(filepath.Join(dbDir, "ca-schema"))
	if err != nil {
		return 0, fmt.Errorf("ca-schema: %w", err)
	}
	return v, nil
}

// CheckCASchema returns Nix 2.8's error for a ca-schema version newer
// than CASchemaVersion.
func CheckCASchema(v int) error {
	if v > CASchemaVersion {
		return &schemaError{fmt.Sprintf("current Nix store ca-schema is version %d, but I only support %d", v, CASchemaVersion)}
	}
	return nil
}

// WriteCASchemaFile writes dbDir's ca-schema file ("3", no newline, mode
// 0644) atomically.
func WriteCASchemaFile(dbDir string) error {
	p := filepath.Join(dbDir, "ca-schema")
	tmp := fmt.Sprintf("%s.tmp-%d", p, os.Getpid())
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(CASchemaVersion)), 0o644); err != nil {
		return fmt.Errorf("write ca-schema file: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write ca-schema file: %w", err)
	}
	return nil
}

// CreateCASchema creates the Realisations and RealisationsRefs tables and
// their indexes if they don't exist (the ca-schema 0 → 3 step of
// migrateCASchema; every statement is "if not exists").
func (d *DB) CreateCASchema(ctx context.Context) error {
	return d.Write(ctx, func(tx *Tx) error {
		_, err := tx.tx.ExecContext(ctx, mustSQL("ca_schema"))
		return err
	})
}

// RealisationRow is one row of Realisations: the realised output
// outputName of the derivation whose masked hashDerivationModulo is
// drvHash ("sha256:<base16>", the column Nix calls drvPath).
type RealisationRow struct {
	ID         int64
	DrvHash    string
	OutputName string
	OutPath    storepath.Path
	Signatures []string
}

// QueryRealisation returns the realisation of (drvHash, outputName), and
// false if there is none (Nix's QueryRealisedOutput). The tables must
// exist (CreateCASchema).
func (t *Tx) QueryRealisation(dir storepath.Dir, drvHash, outputName string) (*RealisationRow, bool, error) {
	var r RealisationRow
	var p string
	var sigs sql.NullString
	err := t.tx.QueryRowContext(t.ctx, mustSQL("query_realised_output"), drvHash, outputName).Scan(&r.ID, &p, &sigs)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("query realisation %s!%s: %w", drvHash, outputName, err)
	}
	if r.OutPath, err = dir.Parse(p); err != nil {
		return nil, false, fmt.Errorf("database holds a bad realisation path: %w", err)
	}
	r.DrvHash, r.OutputName = drvHash, outputName
	r.Signatures = strings.Fields(sigs.String)
	return &r, true, nil
}

// RegisterRealisation inserts a realisation row (Nix's
// RegisterRealisedOutput); signatures are written space-separated, an
// empty string when there are none, as Nix does. The output path must
// be valid.
func (t *Tx) RegisterRealisation(drvHash, outputName string, outPath storepath.Path, sigs []string) error {
	_, err := t.tx.ExecContext(t.ctx, mustSQL("register_realised_output"), drvHash, outputName, string(outPath), strings.Join(sigs, " "))
	if err != nil {
		return fmt.Errorf("register realisation %s!%s: %w", drvHash, outputName, err)
	}
	return nil
}

// UpdateRealisationSignatures replaces the signatures of a realisation
// (Nix's UpdateRealisedOutput).
func (t *Tx) UpdateRealisationSignatures(drvHash, outputName string, sigs []string) error {
	_, err := t.tx.ExecContext(t.ctx, mustSQL("update_realised_output"), strings.Join(sigs, " "), drvHash, outputName)
	if err != nil {
		return fmt.Errorf("update realisation %s!%s: %w", drvHash, outputName, err)
	}
	return nil
}

// AddRealisationReference records that the realisation (drvHash,
// outputName) depends on (depHash, depOutput) (Nix's
// AddRealisationReference).
func (t *Tx) AddRealisationReference(drvHash, outputName, depHash, depOutput string) error {
	_, err := t.tx.ExecContext(t.ctx, mustSQL("add_realisation_reference"), drvHash, outputName, depHash, depOutput)
	if err != nil {
		return fmt.Errorf("add realisation reference %s!%s -> %s!%s: %w", drvHash, outputName, depHash, depOutput, err)
	}
	return nil
}

// QueryRealisationReferences returns the (drvHash, outputName) ids the
// realisation with row id depends on (Nix's QueryRealisationReferences).
func (t *Tx) QueryRealisationReferences(id int64) ([][2]string, error) {
	rows, err := t.tx.QueryContext(t.ctx, mustSQL("query_realisation_references"), id)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out [][2]string
	for rows.Next() {
		var h, o string
		if err := rows.Scan(&h, &o); err != nil {
			return nil, err
		}
		out = append(out, [2]string{h, o})
	}
	return out, rows.Err()
}
