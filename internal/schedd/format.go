package schedd

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteStatus prints st as "ferry status" does: a header, the machines
// (load, state, builds), the running builds with their elapsed time and
// the recent failures.
func WriteStatus(w io.Writer, st *Status) error {
	fmt.Fprintf(w, "ferry scheduler: pid %d, up %s, %d clients, %d queued\n\n", st.PID, roundDur(st.Now.Sub(st.Started)), st.Clients, st.Queue)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MACHINE\tLOAD\tSTATE\tSTARTED\tOK\tFAILED\tURI")
	for _, m := range st.Machines {
		state := "up"
		switch {
		case m.Down:
			state = fmt.Sprintf("down, retry in %s", roundDur(m.RetryIn))
		case m.Failures > 0:
			state = "probing"
		}
		fmt.Fprintf(tw, "%s\t%d/%d\t%s\t%d\t%d\t%d\t%s\n", m.Name, m.InUse, m.MaxJobs, state, m.Started, m.Succeeded, m.Failed, m.URI)
	}
	if len(st.Machines) == 0 {
		fmt.Fprintln(tw, "(none)\t\t\t\t\t\t")
	}
	tw.Flush()
	fmt.Fprintf(w, "\nRUNNING (%d)\n", len(st.Running))
	if len(st.Running) > 0 {
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "DERIVATION\tMACHINE\tELAPSED")
		for _, r := range st.Running {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", r.DrvPath, r.Machine, roundDur(st.Now.Sub(r.Started)))
		}
		tw.Flush()
	}
	fmt.Fprintf(w, "\nRECENT FAILURES (%d)\n", len(st.Recent))
	for i := len(st.Recent) - 1; i >= 0; i-- {
		f := st.Recent[i]
		what := f.Machine
		if f.DrvPath != "" {
			what = fmt.Sprintf("'%s' on '%s'", f.DrvPath, f.Machine)
		}
		fmt.Fprintf(w, "%s  %s: %s\n", f.Time.Local().Format("15:04:05"), what, firstLine(f.Message))
	}
	for _, m := range st.Machines {
		if m.LastError != "" {
			fmt.Fprintf(w, "machine %s: %s\n", m.Name, firstLine(m.LastError))
		}
	}
	return nil
}

func roundDur(d time.Duration) time.Duration {
	if d < 0 {
		return 0
	}
	return d.Round(time.Second)
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}
