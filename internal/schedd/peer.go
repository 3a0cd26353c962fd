package schedd

import (
	"fmt"
	"net"
	"os"
	"os/user"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"
)

// A peer is the user at the other end of a connection, from the socket's
// SO_PEERCRED.
type peer struct {
	uid, gid uint32
}

func peerOf(nc net.Conn) (*peer, error) {
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		return nil, fmt.Errorf("not a unix socket")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	if cerr != nil {
		return nil, cerr
	}
	return &peer{uid: cred.Uid, gid: cred.Gid}, nil
}

// trusted says whether p may have the scheduler build and write into its
// store: root, the scheduler's own user, and whoever trusted-users names
// (a user name, "@group" for the group's members, "*" for anyone), as
// Nix's daemon matches it (matchUser in src/nix-daemon/nix-daemon.cc@2.8.0).
// Anyone who can reach the socket may ask for the status.
func trusted(p *peer, trustedUsers []string) bool {
	if p.uid == 0 || p.uid == uint32(os.Getuid()) {
		return true
	}
	if slices.Contains(trustedUsers, "*") {
		return true
	}
	u, err := user.LookupId(strconv.FormatUint(uint64(p.uid), 10))
	if err != nil {
		return false
	}
	if slices.Contains(trustedUsers, u.Username) {
		return true
	}
	gids, _ := u.GroupIds()
	gids = append(gids, strconv.FormatUint(uint64(p.gid), 10))
	for _, t := range trustedUsers {
		if len(t) < 2 || t[0] != '@' {
			continue
		}
		g, err := user.LookupGroup(t[1:])
		if err == nil && slices.Contains(gids, g.Gid) {
			return true
		}
	}
	return false
}

// refusal is the error a peer that is not trusted gets.
func refusal(p *peer) string {
	name := strconv.FormatUint(uint64(p.uid), 10)
	if u, err := user.LookupId(name); err == nil {
		name = fmt.Sprintf("'%s' (uid %d)", u.Username, p.uid)
	} else {
		name = "uid " + name
	}
	return fmt.Sprintf("user %s may not build through this ferry scheduler (it runs as uid %d; add the user to trusted-users)", name, os.Getuid())
}
