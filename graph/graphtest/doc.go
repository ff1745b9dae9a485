// Package graphtest is a local stand-in for the parts of Meta's Graph API that package graph
// calls, for tests. Like Graph it checks access tokens (app tokens "{app-id}|{secret}" and
// registered system-user tokens, from the Authorization header or an access_token parameter),
// answers errors in Graph's JSON shape ({"error": {"message", "type", "code",
// "error_subcode", "fbtrace_id"}}), and, before it accepts a subscription with a callback,
// sends the callback the verification GET Meta sends (hub.mode=subscribe, hub.challenge,
// hub.verify_token) and accepts only if the challenge comes back; otherwise it answers
// error 2200. Failures (rate limits, 5xx) can be queued with Fail.
package graphtest
