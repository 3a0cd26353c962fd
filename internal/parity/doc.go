// Package parity holds the drop-in parity matrix (its tests): each
// scenario is something a Nix 2.8 user does with an ssh:// remote, run once
// with remote-program=nix-store and once with remote-program=ferry, over
// ssh://localhost (Nix runs the program itself) and over a real sshd on
// loopback, and the two outcomes (exit status, the client's lines, what the
// stores hold, which directories appeared) must be equal. scripts/nix-parity
// prints the matrix.
package parity
