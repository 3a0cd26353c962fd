package schedd

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the daemon's Prometheus series (prefix ferry_scheduler_),
// in a registry of its own.
type metrics struct {
	reg                      *prometheus.Registry
	started, succeeded       *prometheus.CounterVec
	failed, connectFailures  *prometheus.CounterVec
	bytesSent, bytesReceived *prometheus.CounterVec
	queueWait                prometheus.Histogram
}

func counter(name, help string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ferry", Subsystem: "scheduler", Name: name, Help: help}, []string{"machine"})
}

func newMetrics(d *Daemon) *metrics {
	m := &metrics{
		reg:             prometheus.NewRegistry(),
		started:         counter("builds_started_total", "Builds started on the machine."),
		succeeded:       counter("builds_succeeded_total", "Builds on the machine whose outputs are valid in the client store."),
		failed:          counter("builds_failed_total", "Builds on the machine that failed (the build, or the machine or its session)."),
		connectFailures: counter("connect_failures_total", "Sessions to the machine that could not be opened."),
		bytesSent:       counter("bytes_sent_total", "NAR bytes of inputs copied to the machine."),
		bytesReceived:   counter("bytes_received_total", "NAR bytes of outputs copied back from the machine."),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "ferry", Subsystem: "scheduler", Name: "queue_wait_seconds",
			Help:    "Time a try waited for a slot before its answer (accept or postpone).",
			Buckets: []float64{0.001, 0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60}}),
	}
	m.reg.MustRegister(m.started, m.succeeded, m.failed, m.connectFailures, m.bytesSent, m.bytesReceived, m.queueWait,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "ferry", Subsystem: "scheduler", Name: "queue_length",
			Help: "Tries waiting for a free slot."}, func() float64 {
			d.mu.Lock()
			defer d.mu.Unlock()
			return float64(d.queue)
		}),
		&machineCollector{d})
	return m
}

// machineCollector reports each machine's state at scrape time.
type machineCollector struct{ d *Daemon }

var (
	descInUse   = prometheus.NewDesc("ferry_scheduler_slots_in_use", "Slots of the machine held by builds of this scheduler.", []string{"machine"}, nil)
	descMax     = prometheus.NewDesc("ferry_scheduler_slots_max", "The machine's max jobs.", []string{"machine"}, nil)
	descDown    = prometheus.NewDesc("ferry_scheduler_machine_down", "1 while the machine is backed off after a failure.", []string{"machine"}, nil)
	descBackoff = prometheus.NewDesc("ferry_scheduler_backoff_seconds", "Seconds until the machine is tried again (0 when up).", []string{"machine"}, nil)
	descFails   = prometheus.NewDesc("ferry_scheduler_machine_failures", "Consecutive failures of the machine.", []string{"machine"}, nil)
)

func (c *machineCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descInUse
	ch <- descMax
	ch <- descDown
	ch <- descBackoff
	ch <- descFails
}

func (c *machineCollector) Collect(ch chan<- prometheus.Metric) {
	d := c.d
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	for _, uri := range d.order {
		ms := d.machines[uri]
		down, retry := 0.0, 0.0
		if ms.downUntil.After(now) {
			down, retry = 1, ms.downUntil.Sub(now).Seconds()
		}
		ch <- prometheus.MustNewConstMetric(descInUse, prometheus.GaugeValue, float64(ms.inUse), uri)
		ch <- prometheus.MustNewConstMetric(descMax, prometheus.GaugeValue, float64(ms.m.MaxJobs), uri)
		ch <- prometheus.MustNewConstMetric(descDown, prometheus.GaugeValue, down, uri)
		ch <- prometheus.MustNewConstMetric(descBackoff, prometheus.GaugeValue, retry, uri)
		ch <- prometheus.MustNewConstMetric(descFails, prometheus.GaugeValue, float64(ms.failures), uri)
	}
}
