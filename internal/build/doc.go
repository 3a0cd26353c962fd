// Package build realises derivations in a local store the way Nix 2.8's
// LocalDerivationGoal does (docs/store.md §8): it checks the inputs,
// takes the output path locks, prepares a build directory and the
// builder's exact environment, runs the builder through internal/sandbox
// (in Linux namespaces, or directly on the host), enforces the silence,
// time and log limits, then checks, canonicalises, scans and registers
// the outputs in one transaction.
//
// Build is the core for one derivation, given in memory (the serve
// protocol's BasicDerivation needs no .drv file); BuildGraph realises .drv
// files already in the store together with their dependency graph, N
// builds at a time, as "ferry build" does.
//
// # Invariants
//
//   - Outputs are only registered after a build that succeeded and whose
//     outputs passed every check; a failed build registers nothing and
//     deletes what it left at the output paths. (Nix 2.8 registers the
//     wrong path of a fixed-output hash mismatch; ferry doesn't.)
//   - The output path locks are held from before the validity check until
//     the outputs are registered, so two builds of one derivation, in
//     ferry or Nix, build it once: the second waits for the locks, then
//     finds the outputs valid (AlreadyValid).
//   - Inputs and outputs are temp roots of the store before their
//     validity is checked, so a concurrent GC can't delete them.
//   - A program that calls Build must call sandbox.Init first in main
//     (and test binaries in TestMain).
package build
