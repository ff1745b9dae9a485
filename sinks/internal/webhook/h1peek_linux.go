package webhook

import "syscall"

// peeker is what alive needs of a connection: the peek's function, made once, and its result.
type peeker struct {
	peekFn  func(fd uintptr) bool
	peekBuf [1]byte
	peekN   int
	peekErr error
}

// alive reports whether pc's socket is open with nothing to read, from a peek that does not
// wait (MSG_PEEK|MSG_DONTWAIT): EAGAIN means so; end of file or an error means the server
// closed it; a byte means an answer nobody asked for waits on it.
func (pc *h1Conn) alive() bool {
	if pc.rc == nil {
		return false
	}
	if pc.peekFn == nil {
		pc.peekFn = func(fd uintptr) bool {
			pc.peekN, _, pc.peekErr = syscall.Recvfrom(int(fd), pc.peekBuf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			return true // never wait for the socket to become readable
		}
	}
	if err := pc.rc.Read(pc.peekFn); err != nil {
		return false // closed here, or a deadline in the past (cut)
	}
	return pc.peekErr == syscall.EAGAIN
}
