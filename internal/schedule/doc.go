// Package schedule decides where and in which order "ferry build
// --builders" runs the derivations of a build graph: the placement and
// ordering core, without any I/O. Everything it knows comes in through
// its API (jobs, machines, which paths each machine holds, what happened
// to each build and session) and time comes from a Clock, so every
// decision is deterministic and testable with a fake clock. The caller
// owns the ssh sessions, the copies and the builds.
//
// # The loop
//
// The caller builds a Scheduler with New, then repeats: Next gives the
// builds to start now (at most one per free slot), the caller starts them
// and reports each outcome with Done, Failed or MachineDown (and
// MachineUp after a successful connect, Holds after a copy); when Next
// gives nothing and nothing is running, NextWake says when to call Next
// again (a machine's back-off ends, or a build that waits for a busy
// machine should be reconsidered). Finished is true once every job has
// a final Status; Events gives what to log (a machine down, once per
// down transition; a failure that stops new builds).
//
// # Decisions
//
//   - Eligibility is Nix 2.8's: a machine can build a job when its
//     systems include the job's system or the job's system is "builtin",
//     every required feature is supported or mandatory, and every
//     mandatory feature is required (Machine::allSupported and
//     mandatoryMet, build-remote.cc). The local store is one more Machine
//     (Local, MaxJobs = -j N, SpeedFactor 1 unless set); Nix's local rule
//     (canBuildLocally: system or extra-platforms, features within
//     system-features) is the same rule with no mandatory features. A
//     machine with MaxJobs 0 builds nothing, so -j 0 is a Local machine
//     with MaxJobs 0.
//   - preferLocalBuild is Nix's willBuildLocally: if the job prefers a
//     local build and the local machine can build it and -j is not 0,
//     it is built locally only (waiting for a local slot), as
//     DerivationGoal::tryToBuild skips the build hook then. Otherwise it
//     goes wherever it finishes first.
//   - Jobs whose outputs are already valid locally (Job.Valid) are not
//     built. allowSubstitutes is the caller's: as in Nix, only a job with
//     allowSubstitutes (and use-substitutes) is substituted, before it
//     reaches the scheduler; what remains is passed as a job, Valid if
//     the substitution made it valid.
//   - Ready jobs (every dependency built or valid) are taken in order of
//     critical path, the longest chain of EstDuration from the job
//     through its dependents, then by ID.
//   - Each ready job goes to the eligible machine where it is estimated
//     to finish first: when the machine has a free slot (now, or when a
//     running build is expected to end), plus the bytes of its inputs the
//     machine does not hold divided by Options.Bandwidth, plus
//     EstDuration / SpeedFactor. Equal estimates go to the machine that
//     starts sooner, then to the earlier machine. A job whose best
//     machine is busy waits for it (its slot is reserved in the
//     estimate), and NextWake says when to look again.
//   - A machine reported down is not used until its back-off ends
//     (BackoffBase, doubling per consecutive failure, capped at
//     BackoffMax); its running builds go back to the ready set and to
//     other machines (or to it again after the back-off). After the
//     back-off it is probed with one build at a time until MachineUp or a
//     Done resets it.
//   - A genuine build failure (Failed) is final: no retry elsewhere; its
//     dependents are DependencyFailed. Without KeepGoing no new build
//     starts after a failure (running ones finish; the rest is
//     Cancelled). With KeepGoing everything not depending on it is built.
//   - A job that no machine can ever build (down or up) is Unbuildable
//     from the start, with an *UnbuildableError naming the derivation,
//     its system, its features and the machines. Without KeepGoing this
//     stops the build before anything starts, rather than after hours of
//     other builds as Nix's "unable to start any build" does.
package schedule
