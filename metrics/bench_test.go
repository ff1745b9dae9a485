package metrics

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hubrelay/hubrelay/relay"
)

func BenchmarkChange(b *testing.B) {
	m := New(prometheus.NewRegistry())
	evs := []relay.Event{
		{Object: "whatsapp_business_account", Field: "messages"},
		{Object: "page", Field: "feed"},
		{Object: "instagram", Field: "comments"},
	}
	rt := &relay.Route{Rules: []string{"inbound"}, Sinks: []string{"orders"}}
	for i := range evs {
		m.Change(&evs[i], rt, false)
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			m.Change(&evs[i%len(evs)], rt, false)
			i++
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				m.Change(&evs[i%len(evs)], rt, i%4 == 0)
				i++
			}
		})
	})
}

func BenchmarkRequest(b *testing.B) {
	m := New(prometheus.NewRegistry())
	m.Request("shop", relay.OutcomeAccepted, time.Millisecond)
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			m.Request("shop", relay.OutcomeAccepted, 3*time.Millisecond)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				m.Request("shop", relay.OutcomeAccepted, 3*time.Millisecond)
			}
		})
	})
}
