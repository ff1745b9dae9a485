// Package front is the webhook listener's front door: everything a request passes before the
// relay.Receiver sees it, outermost first.
//
//	conns.go     ConnLimiter: open connections in all and per peer address; idle ones make room
//	tls.go       the HTTPS listener's tls.Config, CertReloader (new files without a restart),
//	             HTTPErrorLog (handshake failures as structured, sampled log lines)
//	clientip.go  the client's address: the peer, or what trusted proxies forwarded
//	             (X-Forwarded-For); WithClientIP records it for every log line
//	body.go      ReadBodies: the whole body in memory under a byte budget and a minimum rate,
//	             before a concurrency slot is taken
//	limit.go     Limit: requests in flight, per client address and in all (429, 503)
//	guard.go     who may post: Meta's client certificate (RequireClientCert) or the subject a
//	             trusted proxy vouches for (TrustedProxy); dn.go parses that subject
//	refuse.go    how a refusal is answered, counted (Observer) and logged (sampled)
//
// front imports relay for its vocabulary (relay.Outcome, relay.LogSampler, relay.RemoteAddr)
// and relay imports nothing of front: the Receiver takes a body read here through the
// relay.HeldBody interface it declares, and the client address through relay.WithRemoteAddr.
// cmd/hubrelay/front.go wires these from the config.
package front
