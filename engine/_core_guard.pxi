# Section of engine/_core.pyx (compiled into it by `include`): a decision over a snapshot whose arrays a replica
# worker maps from a file, guarded against the one fault such memory has that no check at its mapping can rule
# out: SIGBUS, raised by the load of a page the file no longer holds (truncated in place: a backup copied over it
# with cp, a `> file`) or that the disk cannot give (an I/O error).  Unguarded, it kills the worker, and with it
# the whole Kamailio (its main process stops every process when one dies).  Guarded, the decision's load jumps
# back out of the handler, the snapshot is marked faulted (never read again), and the caller asks again from the
# file as it now is (engine/replica_local.py) or the server.
#
# What each decision from a mapped file does first (inbound_guarded): compare the file's first 56 bytes (the
# magic, the lengths, the sha256 of the rest) with those checked (a copy made over it differs there), and read
# its last byte (a file cut short faults there, or at any later load).  Either makes the decision a miss: the
# worker opens the file again (engine/replica_local.py: hashed with pread, where a disk's I/O error is an
# OSError, the file refused and tried again at the next look).  The status page is read under the same guard (_core_local.pxi `_read`).
# What stays unguarded: the rest of a file's checks through its mapping, once per file (the header, the
# core's checks of the arrays: a truncation in those milliseconds still raises SIGBUS); a file rewritten during
# the one decision that reads it (compared before it, read through the old checks); a file cut within its last
# page (the rest of that page reads zeros until the worker's next look at it, recheck_s); the decisions no
# replica makes (outbound, pickup, batches).
#
# The jump is safe where it lands: the guarded functions are the nogil decisions (no Python object, no lock, no
# allocation between the guard and the fault).  SA_NODEFER leaves SIGBUS unblocked in the handler, so a jump
# without the signal mask (sigsetjmp(..., 0): no syscall per decision) leaves the mask as it was.  A SIGBUS
# outside a guarded decision (another mapping's, or one sent by kill) goes to the disposition found before:
# the default (the process dies, as it would have) or whatever handler was there.

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.string cimport memcmp


cdef extern from *:
    """
    #include <pthread.h>
    #include <setjmp.h>
    #include <signal.h>
    #include <string.h>
    /* The guarded decision in progress: its jump and its thread.  Decisions hold the GIL, so there is one at a
       time in the process; a SIGBUS of another thread meanwhile is not its.  (No thread-local: a module loaded
       with dlopen may allocate its TLS at the first touch, which a signal handler must not do.) */
    static sigjmp_buf *volatile cg_bus_jump = NULL;
    static volatile pthread_t cg_bus_thread;
    static struct sigaction cg_bus_prev;

    static void cg_bus_handler(int sig, siginfo_t *info, void *context) {
        struct sigaction dfl;
        sigjmp_buf *jump = cg_bus_jump;
        int sent = info == NULL || info->si_code <= 0;   /* kill/raise; a fault has si_code > 0 */
        if (jump != NULL && !sent && pthread_equal(pthread_self(), cg_bus_thread)) {
            cg_bus_jump = NULL;
            siglongjmp(*jump, 1);
        }
        /* not a decision's: the disposition found before takes it */
        if (cg_bus_prev.sa_flags & SA_SIGINFO) {
            if (cg_bus_prev.sa_sigaction != NULL) {
                cg_bus_prev.sa_sigaction(sig, info, context);
                return;
            }
        } else if (cg_bus_prev.sa_handler != SIG_DFL && cg_bus_prev.sa_handler != SIG_IGN) {
            cg_bus_prev.sa_handler(sig);
            return;
        } else if (cg_bus_prev.sa_handler == SIG_IGN && sent) {
            return;   /* ignored, as before */
        }
        /* the default (a fault cannot be ignored either): the process ends, as it would have; a fault is raised
           again by its load when this returns */
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        sigemptyset(&dfl.sa_mask);
        sigaction(SIGBUS, &dfl, NULL);
        if (sent)
            raise(sig);
    }

    /* ours installed (again, when something replaced it since), what was there kept to pass other SIGBUS to */
    static int cg_bus_install(void) {
        struct sigaction sa, now;
        if (sigaction(SIGBUS, NULL, &now) != 0)
            return -1;
        if ((now.sa_flags & SA_SIGINFO) && now.sa_sigaction == cg_bus_handler)
            return 0;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = cg_bus_handler;
        sa.sa_flags = SA_SIGINFO | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        return sigaction(SIGBUS, &sa, &cg_bus_prev);
    }

    typedef void (*cg_guarded_fn)(void *);

    /* fn(arg), 0; or -1 when it faulted (SIGBUS).  The fences keep the compiler from moving fn's loads out of
       the guarded span, whatever it inlines. */
    static int cg_bus_guard(cg_guarded_fn fn, void *arg) {
        sigjmp_buf jump;
        sigjmp_buf *volatile outer = cg_bus_jump;   /* (not written after sigsetjmp: intact after the jump) */
        pthread_t outer_thread = cg_bus_thread;
        if (sigsetjmp(jump, 0) != 0) {
            cg_bus_thread = outer_thread;
            cg_bus_jump = outer;
            return -1;
        }
        cg_bus_thread = pthread_self();
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        cg_bus_jump = &jump;
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        fn(arg);
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        cg_bus_jump = outer;
        cg_bus_thread = outer_thread;
        return 0;
    }
    """
    ctypedef void (*cg_guarded_fn)(void*) noexcept nogil
    int cg_bus_install() nogil
    int cg_bus_guard(cg_guarded_fn fn, void* arg) nogil


cdef enum:
    FILE_PREFIX = 56   # a replica file's magic, lengths and sha256 (engine/replica.py's layout)


ctypedef struct _InboundCall:
    const unsigned char* prefix     # the mapped file's first bytes, NULL: no file (a snapshot built in memory)
    const unsigned char* expected   # ... as they were when checked
    const volatile unsigned char* last   # the file's last byte (read: a file cut short faults there at once)
    bint changed
    const Snap* s
    const char* caller
    Py_ssize_t nc
    const char* called
    Py_ssize_t nd
    int64_t at
    Out* o


cdef void _inbound_call(void* arg) noexcept nogil:
    cdef _InboundCall* c = <_InboundCall*>arg
    if c.prefix != NULL:
        if memcmp(c.prefix, c.expected, FILE_PREFIX) != 0:   # rewritten in place: another file
            c.changed = True
            return
        c.last[0]   # cut short past its last page (truncated to any length that keeps the prefix): SIGBUS here
    decide_inbound(c.s, c.caller, c.nc, c.called, c.nd, c.at, c.o)


def guard_mapped_reads():
    """Install the SIGBUS handler that lets a decision over a mapped file survive the file truncated in place
    (LocalFast does it when made, CoreSnapshot._seal at each file mapped: again if something replaced it since;
    inherited by a fork).  OSError when sigaction fails."""
    if cg_bus_install() != 0:
        raise OSError("sigaction(SIGBUS) failed: a decision over a file truncated in place would kill the process")


cdef bint inbound_guarded(CoreSnapshot snap, const char* caller, Py_ssize_t nc, const char* called, Py_ssize_t nd,
                          int64_t at, Out* o) noexcept:
    """decide_inbound over `snap` into `o`; False (and `snap` marked faulted, `o` cleared) when its file was
    rewritten in place (its first bytes are not those checked: `CoreSnapshot._seal`), its memory could not be
    read (the guard above), or either was found already."""
    cdef _InboundCall c
    if snap.faulted:
        clear(o)
        return False
    c.prefix = <const unsigned char*>snap._file.buf if snap._file.buf != NULL else NULL
    c.expected, c.changed = snap._prefix, False
    c.last = <const unsigned char*>snap._file.buf + snap._file.len - 1 if snap._file.buf != NULL else NULL
    c.s, c.caller, c.nc, c.called, c.nd, c.at, c.o = &snap.s, caller, nc, called, nd, at, o
    if cg_bus_guard(_inbound_call, &c) != 0 or c.changed:
        snap.faulted = True
        clear(o)
        return False
    return True
