package localstore

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sort"

	"ferry/internal/db"
	"ferry/nix/derivation"
	"ferry/nix/hash"
	"ferry/nix/storepath"
	"ferry/store"
)

// EnableCADerivations makes the store ready for the ca-derivations
// experimental feature, as Nix 2.8 does when it opens a store with the
// feature on (migrateCASchema, src/libstore/local-store.cc@2.8.0): if
// <state>/db/ca-schema does not say 3, the Realisations and
// RealisationsRefs tables are created (every statement is "if not
// exists", in one transaction, so concurrent callers are harmless) and
// ca-schema is written. A newer ca-schema is refused with Nix's message;
// the versions 1 and 2 of Nix 2.4's pre-releases, which Nix 2.8 migrates,
// are refused too. It is cheap when the schema is in place.
func (s *Store) EnableCADerivations(ctx context.Context) error {
	dbDir := filepath.Join(s.stateDir, "db")
	v, err := db.ReadCASchemaFile(dbDir)
	if err != nil {
		return err
	}
	if err := db.CheckCASchema(v); err != nil {
		return err
	}
	switch v {
	case db.CASchemaVersion:
		return nil
	case 0:
	default:
		return fmt.Errorf("current Nix store ca-schema is version %d; ferry only creates version %d (let Nix 2.8 migrate it first)", v, db.CASchemaVersion)
	}
	if err := s.db.CreateCASchema(ctx); err != nil {
		return fmt.Errorf("create the ca-derivations tables: %w", err)
	}
	return db.WriteCASchemaFile(dbDir)
}

// CASchemaEnabled reports whether the store has the ca-derivations tables
// (its ca-schema file says 3).
func (s *Store) CASchemaEnabled() (bool, error) {
	v, err := db.ReadCASchemaFile(filepath.Join(s.stateDir, "db"))
	return v == db.CASchemaVersion, err
}

// QueryRealisation returns the realisation id, with its dependent
// realisations, or nil if there is none (Nix's LocalStore::
// queryRealisation_). The ca-derivations tables must exist
// (EnableCADerivations).
func (s *Store) QueryRealisation(ctx context.Context, id derivation.DrvOutput) (*derivation.Realisation, error) {
	var out *derivation.Realisation
	err := s.db.Read(ctx, func(tx *db.Tx) error {
		out = nil
		row, ok, err := tx.QueryRealisation(s.Dir(), id.HashString(), id.Output)
		if err != nil || !ok {
			return err
		}
		r := &derivation.Realisation{ID: id, OutPath: row.OutPath, Signatures: row.Signatures}
		deps, err := tx.QueryRealisationReferences(row.ID)
		if err != nil {
			return err
		}
		for _, d := range deps {
			h, err := hash.Parse(d[0])
			if err != nil {
				return fmt.Errorf("database holds a bad realisation hash %q: %w", d[0], err)
			}
			did := derivation.DrvOutput{DrvHash: h, Output: d[1]}
			dr, ok, err := tx.QueryRealisation(s.Dir(), d[0], d[1])
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("realisation %s refers to the missing %s", id, did)
			}
			if r.Dependent == nil {
				r.Dependent = map[derivation.DrvOutput]storepath.Path{}
			}
			r.Dependent[did] = dr.OutPath
		}
		out = r
		return nil
	})
	return out, err
}

// RegisterRealisation records r, as Nix 2.8's LocalStore::registerDrvOutput
// does: an existing realisation of the same id must have the same output
// path (else Nix's error) and gets the union of both signature sets; a new
// one is inserted. Each dependent realisation must exist locally with the
// same path and is recorded in RealisationsRefs. r.OutPath must be valid.
func (s *Store) RegisterRealisation(ctx context.Context, r *derivation.Realisation) error {
	deps := make([]derivation.DrvOutput, 0, len(r.Dependent))
	for d := range r.Dependent {
		deps = append(deps, d)
	}
	sort.Slice(deps, func(i, j int) bool { return deps[i].String() < deps[j].String() })
	return s.db.Write(ctx, func(tx *db.Tx) error {
		h := r.ID.HashString()
		old, ok, err := tx.QueryRealisation(s.Dir(), h, r.ID.Output)
		if err != nil {
			return err
		}
		if ok {
			if old.OutPath != r.OutPath {
				return fmt.Errorf("Trying to register a realisation of '%s', but we already have another one locally.\nLocal:  %s\nRemote: %s", r.ID, old.OutPath, r.OutPath)
			}
			sigs := append(slices.Clone(old.Signatures), r.Signatures...)
			sort.Strings(sigs)
			if err := tx.UpdateRealisationSignatures(h, r.ID.Output, slices.Compact(sigs)); err != nil {
				return err
			}
		} else {
			if valid, err := tx.IsValid(r.OutPath); err != nil {
				return err
			} else if !valid {
				return fmt.Errorf("register realisation %s: path '%s' %w", r.ID, r.OutPath, store.ErrNotValid)
			}
			sigs := slices.Clone(r.Signatures)
			sort.Strings(sigs)
			if err := tx.RegisterRealisation(h, r.ID.Output, r.OutPath, slices.Compact(sigs)); err != nil {
				return err
			}
		}
		for _, d := range deps {
			dr, ok, err := tx.QueryRealisation(s.Dir(), d.HashString(), d.Output)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("unable to register the derivation '%s' as it depends on the non existent '%s'", r.ID, d)
			}
			if dr.OutPath != r.Dependent[d] {
				return fmt.Errorf("unable to register the derivation '%s' as it depends on a realisation of '%s' that doesn’t match what we have locally", r.ID, d)
			}
			if err := tx.AddRealisationReference(h, r.ID.Output, d.HashString(), d.Output); err != nil {
				return err
			}
		}
		return nil
	})
}
