// Package deadletter stores deliveries the relay gave up on, one JSON file each, so a person
// can read them, fix what made them fail, and replay them.
//
// # Layout
//
// A dead-letter directory (dead_letter.dir in the config) holds:
//
//	orders-00000000000000000042.json   a dead letter: "<sink>-<spool sequence, 20 digits>.json"
//	.tmp-*                             a letter being written; never listed
//	replay/                            letters handed back to the running relay
//	replay/ops-00000000000000000017.json
//
// The file name, without ".json", is the letter's ID, and it is authoritative: a letter copied
// to another name is read under that name. IDs use only ASCII letters, digits, '.', '-' and
// '_' and never start with a dot; sink names are mapped onto that set ("eu/orders" gives
// "eu_orders-…"), so an ID can never name a path outside the directory. Other files (dot
// files, names not ending in ".json", folders) are ignored.
//
// Only regular files inside the directory are read. An entry named like a letter that is a
// named pipe, a device, a socket, or a symbolic link leading out of the directory (or to
// nothing) is never opened for reading: List, Pending, Get and QueueReplay report it, by
// path, as ErrNotRegular ("skipped: a named pipe (FIFO)") and carry on with the other files.
// Files over 64 MiB are reported as ErrCorrupt without being read. Links to letters inside
// the directory are followed.
//
// # File format
//
// Each file is one JSON object, indented by two spaces, UTF-8, ending in a newline, with mode
// 0640 (directories 0750). Fields:
//
//	version    format version, 1. A reader refuses newer versions rather than misread them.
//	id         the letter's ID (the file name wins when they differ).
//	sink       name of the sink the change could not be delivered to.
//	seq        spool sequence number of the abandoned delivery.
//	change_id  identity of the change: its dedup key (relay.Event.ID, relay.Key).
//	rules      names of the rules that routed the change to the sink; absent when none.
//	reason     why delivery stopped (relay.RetryPolicy.Decide): "permanent: " and the error
//	           (a 4xx answer, a rule that failed to evaluate, `sink "x" is not configured`
//	           for a sink removed with deliveries left), "giving up after 10 attempt(s): "
//	           or "max age 24h0m0s exceeded after 7 attempt(s): " and the last error.
//	first_at   when the relay accepted the change (RFC 3339, UTC).
//	dead_at    when the delivery was abandoned (RFC 3339, UTC).
//	attempts   every failed attempt, oldest first; each has "at" (RFC 3339, UTC), "status"
//	           (the HTTP status, absent when no response arrived) and "error" (what went
//	           wrong, with secrets already redacted by the relay).
//	change     the change as the relay delivers it: its JSON envelope (id, app, object, entry,
//	           field, verb, value, received_at, rules), as a JSON object, not base64. Strings
//	           are not re-encoded: \u escapes stay as the relay received them.
//	signature  only for raw-body changes: Meta's X-Hub-Signature-256 header ("sha256=…"), so a
//	           replay can forward it. It is a MAC of the body, not a secret.
//
// Unknown fields are ignored, so a letter written by a newer relay of the same version reads.
// An example, a WhatsApp message the orders sink first could not reach, then rejected:
//
//	{
//	  "version": 1,
//	  "id": "orders-00000000000000000042",
//	  "sink": "orders",
//	  "seq": 42,
//	  "change_id": "wa:msg:shop:wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
//	  "rules": [
//	    "whatsapp-inbound"
//	  ],
//	  "reason": "permanent: orders: POST http://127.0.0.1:9000/meta: status 400 {\"error\":\"unknown product \\\"crème brûlée\\\"\"} after 1 attempt",
//	  "first_at": "2025-06-08T20:59:44.127Z",
//	  "dead_at": "2025-06-08T21:00:16.402Z",
//	  "attempts": [
//	    {
//	      "at": "2025-06-08T20:59:44.13Z",
//	      "status": 503,
//	      "error": "orders: POST http://127.0.0.1:9000/meta: status 503 after 3 attempts"
//	    },
//	    {
//	      "at": "2025-06-08T20:59:46.188Z",
//	      "error": "orders: POST http://127.0.0.1:9000/meta: after 1 attempt: context deadline exceeded"
//	    },
//	    {
//	      "at": "2025-06-08T21:00:16.395Z",
//	      "status": 400,
//	      "error": "orders: POST http://127.0.0.1:9000/meta: status 400 {\"error\":\"unknown product \\\"crème brûlée\\\"\"} after 1 attempt"
//	    }
//	  ],
//	  "change": {
//	    "id": "wa:msg:shop:wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
//	    "app": "shop",
//	    "object": "whatsapp_business_account",
//	    "entry": {
//	      "id": "102290129340398"
//	    },
//	    "field": "messages",
//	    "value": {
//	      "messaging_product": "whatsapp",
//	      "metadata": {
//	        "display_phone_number": "15550783881",
//	        "phone_number_id": "106540352242922"
//	      },
//	      "contacts": [
//	        {
//	          "profile": {
//	            "name": "Sheena Nelson"
//	          },
//	          "wa_id": "16505551234"
//	        }
//	      ],
//	      "messages": [
//	        {
//	          "from": "16505551234",
//	          "id": "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
//	          "timestamp": "1749416383",
//	          "type": "text",
//	          "text": {
//	            "body": "Does it come in another color? Crème brûlée \ud83d\udc4d"
//	          }
//	        }
//	      ]
//	    },
//	    "received_at": "2025-06-08T20:59:44.127Z",
//	    "rules": [
//	      "whatsapp-inbound"
//	    ]
//	  }
//	}
//
// # Writing
//
// Write follows Litestream's file replica client: the letter goes to a temporary file in the
// same directory, which is fsynced, renamed to <ID>.json, and the directory is fsynced. A
// reader sees the old file or the whole new one, never a torn write; a crash can leave a
// ".tmp-*" file behind, which is ignored and safe to delete. Writing an existing ID replaces
// the letter, so the delivery engine may write a letter again after a crash between writing it
// and removing the delivery from the spool.
//
// The change is indented with the rest of the letter, and compacted again when read, so a
// compact change (what json.Marshal produces) comes back byte for byte; whitespace between
// tokens of a non-compact one is not kept. HTML characters are never escaped.
//
// # Reading while the relay runs
//
// A Dir keeps no state in memory and takes no locks: the relay and the deadletter CLI
// ("hubrelay deadletter list|show|replay") use the same directory at the same time. List
// returns every readable letter together with an error that names each file it could not
// read, so one corrupt file never hides the others.
//
// # Replay
//
// Replay goes through the replay/ folder, which the running relay watches:
//
//  1. The CLI calls QueueReplay, which renames <ID>.json into replay/ (an atomic move: the
//     letter is always in exactly one of the two places) and fsyncs both directories.
//  2. The relay calls Pending, commits a new delivery of each letter's change to its spool,
//     and then calls Ack, which deletes replay/<ID>.json. A crash between the two replays the
//     letter again after restart: at least once, like every delivery.
//
// When no relay runs, the CLI can open the spool itself, enqueue the change and Remove the
// letter. A replayed delivery that fails again becomes a new dead letter.
package deadletter
