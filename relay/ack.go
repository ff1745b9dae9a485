package relay

import "strconv"

// AckBody is the body of a 200 to a notification: how many of its changes were new and how
// many were repeats, for a person trying things (Meta ignores it).
func AckBody(changes, fresh int) []byte {
	return appendAck(nil, changes, fresh)
}

// appendAck appends AckBody(changes, fresh) to dst.
func appendAck(dst []byte, changes, fresh int) []byte {
	dst = append(dst, `{"changes":`...)
	dst = strconv.AppendInt(dst, int64(changes), 10)
	dst = append(dst, `,"new":`...)
	dst = strconv.AppendInt(dst, int64(fresh), 10)
	dst = append(dst, `,"duplicates":`...)
	dst = strconv.AppendInt(dst, int64(changes-fresh), 10)
	if changes > fresh {
		dst = append(dst, `,"note":"duplicates were already accepted within storage.dedup_window and are not delivered again"`...)
	}
	return append(dst, "}\n"...)
}
