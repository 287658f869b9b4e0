/*
 * callgate_events: the call events of a relayed INVITE (RINGING, ANSWERED, ENDED of an unanswered call), captured
 * by tm in C and appended to this process's journal of callgate's event spool (callgate_spool.py), ready to send
 * (cg_event.c: byte for byte what the sender's `events_of` makes), or, for a record cg_event.c does not read, as
 * the raw record the script writes itself (`spool_raw`), for the sender to make them of.
 *
 * Why: in callgate_kemi.py the 180 and the 200 of every call ran a Python reply route, ~70 us of CPU each with a
 * SIP worker's cold caches (the SIP benchmark: ~145 us a call, a sixth of what callgate added to the relay).  Here
 * a reply costs a callback and, for the replies that make an event, one write(); and the sender sends the events
 * as read (making them of a raw record in Python cost it ~13 us an event).
 *
 * KSR.callgate_events.track(record), in the request route before t_relay(), with the call's record as
 * callgate_kemi.py's `remember` made it (JSON): the transaction's replies then make the events, as
 * ksr_onreply_invite and ksr_failure_invite do:
 *   - the first 180 or 183 relayed: RINGING; the 200: ANSWERED (RINGING,ANSWERED without a ringing before);
 *   - a negative final outcome (tm's failure handling: every branch failed, or the INVITE timer's 408):
 *     ENDED with the outcome of its code (RINGING,ENDED if it never rang);
 *   - the X-Callgate-User of the 18x or 200 that made the event names who rings or talks (a failure names
 *     none, nor a header that is not UTF-8 or longer than callgate takes: the record's user, as in the script).
 * KSR.callgate_events.follow(record), after dlg_manage(): the end of the message's dialog (a BYE, or the dialog's
 * timer) makes the call's ENDED, answered, as ksr_dialog_event does; once per call: not after an ENDED of a
 * failure (tm relays a late 200; Kamailio 5.6's dialog module does not revive the dialog, "bogus event", but
 * another version may).  Each returns 1, or -1 (logged where it is news)
 * when the script must make those events itself.
 * relayed() tracks an outbound call's replies too (its events name its caller, whatever the reply says), so that a
 * full disk keeps its answer as it keeps an inbound call's; the script still sends its RINGING at once over RPC for
 * its credit hold, and the journal's RINGING reaches callgate as that event's replay.
 * KSR.callgate_events.answer_waits(), at an outbound call's 200: 1 when its answer will wait for the disk, kept (a
 * full disk), when the script sends the call's ANSWERED and then its ENDED over RPC too (the journal's are replays).
 *
 * The journal: CALLGATE_SPOOL (the environment, as the script reads it) + ".journal/", one file per process
 * named PID.c-bBOOT-NS.cgj (callgate_spool.journal_name; the script's own journal is PID-bBOOT-NS.cgj: two
 * writers in one process never share a file),
 * a new one after 16 MiB.  A record (callgate_spool._RECORD, little-endian): magic, payload bytes, crc32 of the
 * payload, CLOCK_MONOTONIC ns, wall time (double), key bytes, call bytes; then the payload: for an event ("CGJ1")
 * its key (CALL:KIND), callgate's call id and the CallEventRequest; for a raw record ("CGJ2", no key or call)
 * "R1\0" KINDS "\0" AT "\0" OUTCOME "\0" RECORD "\0" USER.  One write() a reply; a write the disk refuses whole
 * or in part is cut back (nothing of it stays) and logged.  An event the disk refuses is kept with the call (its
 * instant, user and outcome), the call's later events behind it, its ENDED too, and written at its own instant as
 * soon as the disk takes it (the module's timer tries every second, the call's next event first): a full disk while
 * a call rings, answers or ends, room again later, and callgate still has the call whole, its talk billed from the
 * answer to the BYE (a lost ENDED left an answered call to callgate's expiry, billed until then).  At most
 * CALLGATE_KEPT_MAX calls (10,000) keep events, in shared memory, and none starts to while less than an eighth of it
 * is free: past that, and at Kamailio's stop, what the disk refuses is lost, logged.  The limit of waiting events
 * (CALLGATE_SPOOL_MAX) is kept by the sender as it moves the journals.
 */

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "../../core/sr_module.h"
#include "../../core/dprint.h"
#include "../../core/mem/mem.h"
#include "../../core/mem/shm_mem.h"
#include "../../core/kemi.h"
#include "../../core/globals.h"
#include "../../core/locking.h"
#include "../../core/timer.h"
#include "../../core/parser/msg_parser.h"
#include "../../core/parser/parse_hname2.h"
#include "../../core/parser/parse_cseq.h"
#include "../../modules/rr/api.h"
#include "../../modules/tm/tm_load.h"
#include "../../modules/dialog/dlg_load.h"
#include "../../modules/dialog/dlg_hash.h"

#include "cg_event.h"

MODULE_VERSION

#define CG_RAW_MAGIC 0x324A4743u        /* callgate_spool._RAW_MAGIC */
#define CG_RAW_TAG "R1\0"                /* callgate_kemi.RAW_TAG_BYTES */
#define CG_RAW_TAG_LEN 3
#define CG_ROTATE_BYTES (16 << 20)       /* callgate_spool.ROTATE_BYTES */
#define CG_MAX_RECORD (1 << 20)          /* a call's record longer than this is not tracked (logged) */
#define CG_USER_HEADER "X-Callgate-User"
#define CG_USER_HEADER_LEN (sizeof(CG_USER_HEADER) - 1)
#define CG_USER_MAX 1024                 /* a header's value longer than this names nobody (4 * CG_USER_MAX_CHARS) */
#define CG_CALL_ID_MAX 256               /* callgate_kemi.CALL_ID_MAX (characters there, bytes here): a longer call id
                                            is left to the script, which names it by its SHA-256 */

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the journal's records are little-endian: this module writes them as the machine lays them out"
#endif

#pragma pack(push, 1)
typedef struct {
	uint32_t magic, length, crc;
	int64_t created_ns;
	double wall;
	uint16_t key, call;
} cg_header_t;
#pragma pack(pop)

/* an event of a call the disk refused (a full disk): kept with the call and written, at its own instant and naming
 * its own user, as soon as the disk takes it (the module's timer tries every second, and the call's next event
 * first), so that callgate still has the call whole: its ringing, and its answer's instant (what it bills) */
typedef struct {
	struct timespec mono, wall;
	char *user;          /* shared memory, or NULL: the record's user */
	int user_len;
	const char *outcome; /* an ENDED's (a string of outcome_of, the module's own: the same in every process) */
	char why[64];        /* what the disk said */
} cg_lost_t;

#define CG_RINGING 1
#define CG_ANSWERED 2
#define CG_ENDED 4

/* what a followed call keeps (shared memory), held by its transaction, its dialog and the list of calls with kept
 * events: freed by the last of them to let it go (refs).  rung and answered change under tm's reply lock (its
 * callbacks run under it); ended is set once, atomically (the failure, a BYE and the dialog's timer in different
 * processes); what the call writes to the journal, and lost, lost_at and listed, under its own lock (a reply,
 * its dialog's end and the module's timer in three processes) */
typedef struct cg_call {
	int refs;
	gen_lock_t lock;
	int rung;
	int answered;
	int ended;
	int lost;            /* CG_RINGING, CG_ANSWERED, CG_ENDED: refused by the disk, kept to be written */
	int listed;          /* in the list of calls with kept events (which holds a ref) */
	int followed;        /* its dialog's end makes its ENDED here (follow): set before the dialog can end */
	int outbound;        /* its events name its caller (cg_event.c): no reply's user is read or kept */
	struct cg_call *kept_next;
	cg_lost_t lost_at[3];   /* [0] the RINGING's, [1] the ANSWERED's, [2] the ENDED's */
	int len;             /* the record's bytes */
	int prepared_len;    /* then its events' common parts, encoded (cg_prepare); 0: the record is written raw */
	char record[1];
} cg_call_t;

/* the calls with kept events (shared memory, under kept_lock), oldest first, for the module's timer, and how many
 * they are: at most kept_max (CALLGATE_KEPT_MAX), and none is added while less than an eighth of Kamailio's shared
 * memory is free, because a call that keeps its ENDED outlives its dialog there, and a disk full for hours at
 * hundreds of calls a second must not take the shared memory every new call needs */
typedef struct {
	cg_call_t *head;
	cg_call_t **end;     /* the kept_next of the last call, or &head */
	int count;
	int refusing;        /* the disk refused the last journal write of any process (a hint: no lock) */
} cg_kept_t;
static gen_lock_t *kept_lock = NULL;
static cg_kept_t *kept = NULL;
static int kept_max = 10000;

static struct tm_binds tmb;
static struct dlg_binds dlgb;
static struct rr_binds rrb;
static int with_dialogs = 0;              /* the dialog module is loaded: follow() can */
static int with_rr = 0;                   /* the rr module is loaded: relayed() can */
/* the call track() was given for the message this process handles (its transaction holds it): follow() of the
 * same message takes it (once), and shares it */
static cg_call_t *tracked_call = NULL;
static unsigned int tracked_msg = 0;
static int tracked_pid = 0;

static char *journal_dir = NULL;    /* CALLGATE_SPOOL + ".journal" */
static char boot_id[9] = "";        /* callgate_spool.BOOT: this machine's boot, in the journals' names */
static int journal_fd = -1;
static pid_t journal_pid = 0;
static off_t journal_size = 0;

/* the first 8 hex digits of the kernel's boot id, as callgate_spool._boot_id reads them ("" where none) */
static void read_boot_id(void)
{
	ssize_t got = -1;
	int i, fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
	if(fd >= 0) {
		got = read(fd, boot_id, 8);
		close(fd);
	}
	boot_id[got == 8 ? 8 : 0] = '\0';
	for(i = 0; boot_id[i]; i++)
		if(!((boot_id[i] >= '0' && boot_id[i] <= '9') || (boot_id[i] >= 'a' && boot_id[i] <= 'f')))
			boot_id[0] = '\0';   /* (not what the kernel writes: none, as the reader would compare it) */
}

static void kept_timer(unsigned int ticks, void *param);
static void journal_forked(void);

/* CALLGATE_KEPT_MAX (the environment, as the script's settings): how many calls may keep events the disk refused;
 * -1 (logged) for a value that is no whole number from 0 to 1,000,000 */
static int kept_max_read(void)
{
	const char *text = getenv("CALLGATE_KEPT_MAX");
	char *end = NULL;
	long value;
	if(text == NULL || text[0] == '\0')
		return 0;
	errno = 0;
	value = strtol(text, &end, 10);
	if(errno != 0 || end == text || *end != '\0' || value < 0 || value > 1000000) {
		LM_ERR("callgate_events: CALLGATE_KEPT_MAX must be a whole number of calls from 0 to 1000000 (0: nothing "
			   "the disk refuses is kept), not \"%.40s\"\n", text);
		return -1;
	}
	kept_max = (int)value;
	return 0;
}

static int mod_init(void)
{
	const char *spool = getenv("CALLGATE_SPOOL");
	size_t n;
	if(load_tm_api(&tmb) < 0) {
		LM_ERR("callgate_events: the tm module must be loaded before this one\n");
		return -1;
	}
	with_dialogs = load_dlg_api(&dlgb) == 0;
	/* (load_rr_api logs an error where rr is not loaded: asked first) */
	with_rr = find_export("load_rr", 0, 0) != NULL && load_rr_api(&rrb) == 0;
	if(spool == NULL || spool[0] == '\0')
		spool = "/var/spool/callgate/events.sqlite";   /* callgate_kemi.py's default */
	n = strlen(spool) + sizeof(".journal");
	journal_dir = (char *)malloc(n);
	if(journal_dir == NULL) {
		LM_ERR("callgate_events: no memory\n");
		return -1;
	}
	snprintf(journal_dir, n, "%s.journal", spool);
	read_boot_id();
	if(kept_max_read() < 0)
		return -1;
	if(pthread_atfork(NULL, NULL, journal_forked) != 0) {
		LM_ERR("callgate_events: the fork handler cannot be registered\n");
		return -1;
	}
	kept_lock = lock_alloc();
	kept = (cg_kept_t *)shm_malloc(sizeof(*kept));
	if(kept != NULL) {   /* (mod_destroy runs after a failed start too) */
		kept->head = NULL;
		kept->end = &kept->head;
		kept->count = 0;
		kept->refusing = 0;
	}
	if(kept_lock == NULL || kept == NULL || lock_init(kept_lock) == NULL) {
		LM_ERR("callgate_events: no shared memory\n");
		return -1;
	}
	if(register_timer(kept_timer, 0, 1) < 0) {
		LM_ERR("callgate_events: the timer of the events the disk refused cannot be registered\n");
		return -1;
	}
	return 0;
}

static void journal_close(void)
{
	if(journal_fd >= 0 && journal_pid != 0)
		close(journal_fd);
	journal_fd = -1;
}

/* in a child, at its fork (pthread_atfork): the journal it inherited is its parent's (its copy of the descriptor
 * closed: the parent's stays open), and it begins its own at its first event.  (Where getpid() at every event was
 * a syscall an event.) */
static void journal_forked(void)
{
	if(journal_fd >= 0)
		close(journal_fd);
	journal_pid = 0;
	journal_fd = -1;
}

/* a journal file of this process with room: a new one after a fork and after CG_ROTATE_BYTES */
static int journal_ready(void)
{
	char path[4096];
	struct timespec now;
	pid_t pid;
	struct stat st;
	/* (a journal removed under its writer, by hand or a sender that misjudged it: what it would take is lost, so
	 * a new one, as callgate_spool.Journal does) */
	if(journal_fd >= 0 && journal_pid != 0 && journal_size < CG_ROTATE_BYTES
			&& (fstat(journal_fd, &st) < 0 || st.st_nlink > 0))
		return 0;
	journal_close();
	pid = getpid();
	if(mkdir(journal_dir, 0750) < 0 && errno != EEXIST) {
		LM_ERR("callgate_events: the journal directory %s cannot be made: %s\n", journal_dir, strerror(errno));
		return -1;
	}
	/* callgate_spool.journal_name: the boot and CLOCK_BOOTTIME, never the wall clock (stepped back between two
	 * rotations, it made a live journal look older than a finished one: removed while written) */
	clock_gettime(CLOCK_BOOTTIME, &now);
	if(snprintf(path, sizeof(path), "%s/%d.c-b%s-%020lld.cgj", journal_dir, (int)pid, boot_id,
			   (long long)now.tv_sec * 1000000000LL + now.tv_nsec) >= (int)sizeof(path)) {
		LM_ERR("callgate_events: the journal directory's name is too long\n");
		return -1;
	}
	journal_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
	if(journal_fd < 0) {
		LM_ERR("callgate_events: the journal %s cannot be opened: %s\n", path, strerror(errno));
		return -1;
	}
	journal_pid = pid;
	journal_size = 0;
	return 0;
}

/* the first X-Callgate-User of a reply being relayed (private memory: parsed here), trimmed as $hdr() has it; none
 * for an outbound call */
static str reply_user(cg_call_t *call, struct sip_msg *rpl)
{
	str none = STR_NULL;
	struct hdr_field *hf;
	if(call->outbound || rpl == NULL || rpl == FAKED_REPLY)   /* (an outbound call's events name its caller) */
		return none;
	if(parse_headers(rpl, HDR_EOH_F, 0) < 0)
		return none;
	for(hf = rpl->headers; hf != NULL; hf = hf->next) {
		if(hf->name.len == (int)CG_USER_HEADER_LEN
				&& strncasecmp(hf->name.s, CG_USER_HEADER, CG_USER_HEADER_LEN) == 0) {
			/* longer: more characters than callgate takes (4 bytes at most each), and the script names the
			 * record's user for it: so does the sender, given none */
			return hf->body.len > CG_USER_MAX ? none : hf->body;
		}
	}
	return none;
}

static const char *outcome_of(struct cell *t, int code)
{
	/* a CANCEL of a branch that had sent nothing yet ends with tm's own 408 (cancel_b_method 1): cancelled */
	if(t != NULL && (t->flags & T_CANCELED))
		return "cancelled";
	if(code == 486 || code == 600 || code == 603)
		return "busy";
	if(code == 408 || code == 480)
		return "no_answer";
	if(code == 487)
		return "cancelled";
	return "failed";
}

/* why the last journal_write failed (for the log) */
static const char *journal_error = "";

/* BUF (TOTAL bytes: whole records) at the journal's end in one write(): 0, or -1 when the disk refuses it whole or
 * in part (what it took is cut back: the journal holds whole records only; journal_error says why) */
static int journal_write(const char *buf, size_t total)
{
	ssize_t written;
	do {
		written = write(journal_fd, buf, total);
	} while(written < 0 && errno == EINTR);
	if(written == (ssize_t)total) {
		journal_size += written;
		if(*(volatile int *)&kept->refusing)   /* (read first: no write to a shared line at every event) */
			*(volatile int *)&kept->refusing = 0;
		return 0;
	}
	*(volatile int *)&kept->refusing = 1;
	journal_error = written < 0 ? strerror(errno) : "the disk took part of the record";
	if(ftruncate(journal_fd, journal_size) < 0)
		journal_close();   /* the next record begins a new file; the reader sets this one aside */
	return -1;
}

/* the events KINDS of the call ready to send (cg_event_records), one write() each, in order, stopping at the first
 * the disk refuses (never a part of one): how many were written, or -1 when they cannot be made here (the raw
 * record then) */
static int journal_append_events(cg_call_t *call, const char *kinds, const char *outcome, str user,
		struct timespec *mono, struct timespec *wall)
{
	char small[4096];
	char names[2][16];
	char *buf = small;
	const char *k = kinds;
	size_t total, used = 0, made[2], n = 0, i;
	int whole = 0, written = -1;   /* every kind made */
	/* two events at most: each its header, key, call and request (cg_event_records says 0 if it takes more) */
	total = 2 * (32 + 3 * (size_t)call->prepared_len + (size_t)(user.len > 0 ? user.len : 0) + strlen(outcome) + 64);
	if(total > sizeof(small) && (buf = (char *)pkg_malloc(total)) == NULL)
		return -1;
	/* every event made before any is written: a kind not made here leaves them all to the raw record */
	while(*k && n < 2) {
		size_t len = strcspn(k, ",");
		if(len == 0 || len >= sizeof(names[n]))
			break;
		memcpy(names[n], k, len);
		names[n][len] = '\0';
		made[n] = cg_event_records(call->record + call->len, (size_t)call->prepared_len, names[n], outcome,
				user.s, user.len > 0 ? (size_t)user.len : 0, (int64_t)wall->tv_sec,
				(int64_t)mono->tv_sec * 1000000000LL + mono->tv_nsec,
				(double)wall->tv_sec + (double)wall->tv_nsec / 1e9, buf + used, total - used);
		if(made[n] == 0)
			break;
		used += made[n++];
		k += len;
		if(*k == '\0')
			whole = 1;
		else if(*++k == '\0')
			break;   /* ("RINGING,": not made here) */
	}
	if(whole && *k == '\0') {
		for(i = 0, used = 0, written = 0; i < n && journal_write(buf + used, made[i]) == 0; used += made[i++])
			written++;
	}
	if(buf != small)
		pkg_free(buf);
	return written;
}

/* the events KINDS of the call (one or two, comma-separated) at the instant AT_MONO/AT_WALL, in one write()
 * each: ready to send (cg_event_records), else as one raw record for the sender to make them of, in the journal
 * its caller readied (journal_ready).  How many of KINDS were written, in order (the disk refused the next one:
 * journal_error says why) */
static int journal_append(cg_call_t *call, const char *kinds, const char *outcome, str user,
		struct timespec *at_mono, struct timespec *at_wall)
{
	char at[32];
	char small[4096];
	char *buf = small;
	cg_header_t h;
	struct timespec mono, wall;
	size_t kinds_len = strlen(kinds), outcome_len = strlen(outcome), at_len, payload, total;
	int written;
	char *p;

	/* (call_events readies the file first and stamps a fresh record after it: a record stamped before a slow open
	 * could be read after a later one; an event kept and written later keeps its instant, older than anything the
	 * sender waits for, and nothing of its call was written after it) */
	mono = *at_mono;
	wall = *at_wall;
	if(call->prepared_len > 0 && (written = journal_append_events(call, kinds, outcome, user, &mono, &wall)) >= 0)
		return written;
	at_len = (size_t)snprintf(at, sizeof(at), "%lld", (long long)wall.tv_sec);
	payload = CG_RAW_TAG_LEN + kinds_len + 1 + at_len + 1 + outcome_len + 1 + (size_t)call->len + 1
			  + (size_t)user.len;
	total = sizeof(h) + payload;
	if(total > sizeof(small)) {
		buf = (char *)pkg_malloc(total);
		if(buf == NULL) {
			journal_error = "no memory for the record";
			return 0;
		}
	}
	p = buf + sizeof(h);
	memcpy(p, CG_RAW_TAG, CG_RAW_TAG_LEN);
	p += CG_RAW_TAG_LEN;
	memcpy(p, kinds, kinds_len);
	p += kinds_len;
	*p++ = '\0';
	memcpy(p, at, at_len);
	p += at_len;
	*p++ = '\0';
	memcpy(p, outcome, outcome_len);
	p += outcome_len;
	*p++ = '\0';
	memcpy(p, call->record, call->len);
	p += call->len;
	*p++ = '\0';
	if(user.len > 0)
		memcpy(p, user.s, user.len);

	h.magic = CG_RAW_MAGIC;
	h.length = (uint32_t)payload;
	h.crc = (uint32_t)crc32(0L, (const Bytef *)(buf + sizeof(h)), (uInt)payload);
	h.created_ns = (int64_t)mono.tv_sec * 1000000000LL + mono.tv_nsec;
	h.wall = (double)wall.tv_sec + (double)wall.tv_nsec / 1e9;
	h.key = 0;
	h.call = 0;
	memcpy(buf, &h, sizeof(h));
	written = journal_write(buf, total) == 0 ? (strchr(kinds, ',') ? 2 : 1) : 0;
	if(buf != small)
		pkg_free(buf);
	return written;
}

static const char *kind_name(int kind)
{
	return kind == CG_RINGING ? "RINGING" : kind == CG_ANSWERED ? "ANSWERED" : "ENDED";
}

/* where the call keeps its refused KIND (CG_RINGING, CG_ANSWERED or CG_ENDED) */
static cg_lost_t *kept_of(cg_call_t *call, int kind)
{
	return &call->lost_at[kind == CG_RINGING ? 0 : kind == CG_ANSWERED ? 1 : 2];
}

static void forget_lost(cg_call_t *call, int kind)
{
	cg_lost_t *lost = kept_of(call, kind);
	if(lost->user != NULL)
		shm_free(lost->user);
	lost->user = NULL;
	lost->user_len = 0;
	call->lost &= ~kind;
}

static const int kept_kinds[3] = {CG_RINGING, CG_ANSWERED, CG_ENDED};   /* in the order they are written */

/* the kept events written by the timer this tick, and past how many each is not logged (a disk that has room
 * again after minutes would otherwise log a line for each of thousands of calls' events) */
static int kept_written = 0;
#define CG_KEPT_LOGGED 10

/* the call's kept events, in order, each at its own instant, until the disk refuses one (the call's lock held) */
static void write_kept(cg_call_t *call)
{
	str none = STR_NULL;
	int i;
	if(call->lost && journal_ready() < 0)
		journal_error = "no journal";
	for(i = 0; i < 3 && call->lost; i++) {
		cg_lost_t *lost = kept_of(call, kept_kinds[i]);
		str who = {lost->user, lost->user_len};
		if(!(call->lost & kept_kinds[i]))
			continue;
		if(journal_fd < 0 || journal_append(call, kind_name(kept_kinds[i]), lost->outcome,
				lost->user != NULL ? who : none, &lost->mono, &lost->wall) < 1) {
			snprintf(lost->why, sizeof(lost->why), "%s", journal_error);
			break;
		}
		if(++kept_written <= CG_KEPT_LOGGED)
			LM_NOTICE("callgate_events: %s of a call the disk refused before is spooled now\n",
					kind_name(kept_kinds[i]));
		forget_lost(call, kept_kinds[i]);
	}
}

/* what the call still keeps, lost (logged with why the disk refused it; WHEN: "" or why it is given up now) */
static void lose_kept(cg_call_t *call, const char *when)
{
	int i;
	for(i = 0; i < 3; i++) {
		if(call->lost & kept_kinds[i]) {
			LM_ERR("callgate_events: %s of a call not spooled, lost: %s%s\n", kind_name(kept_kinds[i]),
					kept_of(call, kept_kinds[i])->why, when);
			forget_lost(call, kept_kinds[i]);
		}
	}
}

/* put the call at the end of the timer's list (its lock not held: the list's lock is taken alone) */
static void list_kept(cg_call_t *call)
{
	lock_get(kept_lock);
	call->kept_next = NULL;
	*kept->end = call;
	kept->end = &call->kept_next;
	kept->count++;
	lock_release(kept_lock);
}

/* why a call that keeps nothing yet cannot start to ("" when it can): CALLGATE_KEPT_MAX calls keep events, or
 * shared memory is short (both read without the list's lock: a bound, overshot by a call a process at most) */
static const char *no_room_to_keep(void)
{
	if(kept_max <= *(volatile int *)&kept->count)
		return " (and CALLGATE_KEPT_MAX calls already keep events for the disk)";
	if(shm_available() < shm_mem_size / 8)
		return " (and less than an eighth of Kamailio's shared memory is free: nothing more is kept)";
	return "";
}

/* the events KINDS (CG_ flags) of the call, at this instant, its outcome and the user the reply names, after the
 * call's kept events (a call's events reach the journal in order: nothing goes behind an event still refused).  An
 * event the disk refuses is kept, the call's end (FINAL) too: the timer writes them once the disk takes them, so
 * that callgate bills the talk up to the BYE's instant, not until it expires the call.  Nothing is kept for a call
 * whose dialog the module does not follow (the script's ENDED could be written before it), nor past
 * CALLGATE_KEPT_MAX calls: lost, logged.  A reply's event after the call's end (an early dialog ended by hand) is
 * not written. */
static void call_events(cg_call_t *call, int kinds, const char *outcome, str user, int final)
{
	static const int order[3] = {CG_RINGING, CG_ANSWERED, CG_ENDED};
	struct timespec mono, wall;
	char names[32];
	int i, n, kind, wanted[3], count = 0, list, stamped = 0;
	const char *full = "";
	lock_get(&call->lock);
	if(!final && call->ended) {
		lock_release(&call->lock);
		return;
	}
	kept_written = 0;
	write_kept(call);
	names[0] = '\0';
	for(i = 0; i < 3; i++) {
		if(kinds & order[i]) {
			wanted[count++] = order[i];
			if(names[0])
				strcat(names, ",");
			strcat(names, kind_name(order[i]));
		}
	}
	/* the file first, then the clock (a record stamped before a slow open could be read after a later one), one
	 * instant for what this event writes and keeps */
	n = 0;
	if(call->lost) {
		journal_error = "behind an event of the call the disk refused";
	} else if(journal_ready() < 0) {
		*(volatile int *)&kept->refusing = 1;
		journal_error = "no journal";
	} else {
		clock_gettime(CLOCK_MONOTONIC, &mono);
		clock_gettime(CLOCK_REALTIME, &wall);
		stamped = 1;
		n = journal_append(call, names, outcome, user, &mono, &wall);
	}
	if(!stamped) {   /* (what is kept has the instant of the reply, as its record would have had) */
		clock_gettime(CLOCK_MONOTONIC, &mono);
		clock_gettime(CLOCK_REALTIME, &wall);
	}
	/* (a call already listed keeps all it must: its ENDED lost behind a kept ANSWERED would bill it to its expiry) */
	if(n < count && call->followed && !call->listed && !call->lost)
		full = no_room_to_keep();
	for(i = n; i < count; i++) {
		kind = wanted[i];
		if(i > n)   /* (not tried: behind the one the disk refused) */
			journal_error = "behind an event of the call the disk refused";
		if(!call->followed || full[0]) {
			LM_ERR("callgate_events: %s of a call not spooled, lost: %s%s\n", kind_name(kind), journal_error, full);
			continue;
		}
		if(!(call->lost & kind)) {
			cg_lost_t *lost = kept_of(call, kind);
			/* (the ANSWERED of a RINGING,ANSWERED a nanosecond after its RINGING, written or kept: the sender
			 * orders a round's records by this clock, and a tie between two journals could put it first) */
			lost->mono = mono;
			lost->mono.tv_nsec += i;
			if(lost->mono.tv_nsec >= 1000000000L) {
				lost->mono.tv_sec++;
				lost->mono.tv_nsec -= 1000000000L;
			}
			lost->wall = wall;
			lost->user = NULL;
			lost->user_len = 0;
			lost->outcome = kind == CG_ENDED ? outcome : "";
			snprintf(lost->why, sizeof(lost->why), "%s", journal_error);
			if(user.len > 0 && user.s != NULL) {
				if((lost->user = (char *)shm_malloc(user.len)) != NULL) {
					memcpy(lost->user, user.s, user.len);
					lost->user_len = user.len;
				} else {
					LM_ERR("callgate_events: no shared memory to keep who a refused %s names: the call's record's "
						   "user is named\n", kind_name(kind));
				}
			}
			call->lost |= kind;
		}
		LM_ERR("callgate_events: %s of a call not spooled yet: %s; kept, and written as soon as the disk takes it\n",
				kind_name(kind), journal_error);
	}
	list = call->lost && !call->listed;
	if(list) {
		call->listed = 1;
		__sync_fetch_and_add(&call->refs, 1);
	}
	lock_release(&call->lock);
	if(list)
		list_kept(call);
}

static void on_reply(struct cell *t, int type, struct tmcb_params *ps)
{
	cg_call_t *call;
	int code = ps->code, rung;
	if(ps->param == NULL || *ps->param == NULL)
		return;
	call = (cg_call_t *)*ps->param;
	rung = call->rung;
	if(type & TMCB_ON_FAILURE) {
		call->rung = call->answered = 1;   /* a 200 relayed after the failure (tm relays a late 2xx): no event */
		if(!__sync_bool_compare_and_swap(&call->ended, 0, 1))
			return;
		/* no X-Callgate-User: tm keeps the failing reply as a clone in shared memory, parsed as far as tm needed
		 * (parsing it further here would hang private memory on it); the RINGING of a call that never rang
		 * names the record's user, as the script does for a 4xx without the header */
		call_events(call, rung ? CG_ENDED : CG_RINGING | CG_ENDED, outcome_of(t, code), (str)STR_NULL, 1);
		return;
	}
	if(code == 180 || code == 183) {
		if(!call->rung) {
			call->rung = 1;
			call_events(call, CG_RINGING, "", reply_user(call, ps->rpl), 0);
		}
	} else if(code == 200 && !call->answered) {
		call->answered = 1;
		call_events(call, rung ? CG_ANSWERED : CG_RINGING | CG_ANSWERED, "",
				reply_user(call, ps->rpl), 0);
		call->rung = 1;
	}
}

static void release_call(void *param)
{
	cg_call_t *call = (cg_call_t *)param;
	if(call != NULL && __sync_sub_and_fetch(&call->refs, 1) == 0) {
		forget_lost(call, CG_RINGING);   /* (none: a call with kept events is held by the list) */
		forget_lost(call, CG_ANSWERED);
		forget_lost(call, CG_ENDED);
		shm_free(call);
	}
}

/* every second, in Kamailio's slow timer process: the kept events of each listed call written once the disk takes
 * them (no more tries this second once it refuses one: it refuses them all, and each would log); a call leaves the
 * list when it has none left (written, or lost at its end).  The list is walked in place, under its lock (taken
 * before a call's, never after: call_events lets its call go before it lists it), so that it is whole when
 * Kamailio stops */
static void kept_timer(unsigned int ticks, void *param)
{
	cg_call_t **at, *call;
	int refused = 0;
	kept_written = 0;
	lock_get(kept_lock);
	for(at = &kept->head; (call = *at) != NULL;) {
		int still;
		lock_get(&call->lock);
		if(call->lost && !refused) {
			write_kept(call);
			refused = call->lost != 0;
			if(refused && call->kept_next != NULL) {
				/* to the end: the next tick tries the next call first (a record the disk cannot take, a big one
				 * on a nearly full disk, must not keep the calls behind it waiting for good) */
				lock_release(&call->lock);
				*at = call->kept_next;
				call->kept_next = NULL;
				*kept->end = call;
				kept->end = &call->kept_next;
				continue;
			}
		}
		still = call->lost != 0;
		call->listed = still;
		lock_release(&call->lock);
		if(still) {
			at = &call->kept_next;
		} else {
			*at = call->kept_next;
			if(*at == NULL)
				kept->end = at;
			kept->count--;
			release_call(call);
		}
	}
	lock_release(kept_lock);
	if(kept_written > CG_KEPT_LOGGED)
		LM_NOTICE("callgate_events: %d more events the disk refused before are spooled now\n",
				kept_written - CG_KEPT_LOGGED);
}

static void on_dialog_end(struct dlg_cell *dlg, int type, struct dlg_cb_params *params)
{
	cg_call_t *call;
	if(params == NULL || params->param == NULL || *params->param == NULL)
		return;
	call = (cg_call_t *)*params->param;
	if(__sync_bool_compare_and_swap(&call->ended, 0, 1))
		call_events(call, CG_ENDED, "answered", (str)STR_NULL, 1);
}

/* at Kamailio's stop: what is still kept is lost */
static void mod_destroy(void)
{
	cg_call_t *call;
	if(kept == NULL)
		return;
	for(call = kept->head; call != NULL; call = call->kept_next)
		lose_kept(call, " (Kamailio stopped)");
}

static cg_call_t *new_call(str *record)
{
	char prepared[CG_PREPARED_ROOM(CG_PREPARE_MAX)];
	size_t prepared_len = record->len <= CG_PREPARE_MAX
			? cg_prepare(record->s, (size_t)record->len, prepared, sizeof(prepared)) : 0;
	cg_call_t *call = (cg_call_t *)shm_malloc(sizeof(cg_call_t) + record->len + prepared_len);
	if(call == NULL) {
		LM_ERR("callgate_events: no shared memory to track a call\n");
		return NULL;
	}
	memset(call, 0, sizeof(*call));
	call->refs = 1;
	lock_init(&call->lock);
	call->len = record->len;
	call->prepared_len = (int)prepared_len;
	memcpy(call->record, record->s, record->len);
	memcpy(call->record + record->len, prepared, prepared_len);
	return call;
}

static int record_ok(str *record)
{
	if(record == NULL || record->len <= 0 || record->len > CG_MAX_RECORD) {
		LM_ERR("callgate_events: a call record of %d bytes is not followed\n", record ? record->len : -1);
		return 0;
	}
	return 1;
}

/* KSR.callgate_events.track(record): this INVITE's replies make the call's events (1), or -1 */
static int ki_track(sip_msg_t *msg, str *record)
{
	cg_call_t *call;
	tracked_call = NULL;
	if(msg == NULL || msg->first_line.type != SIP_REQUEST || msg->REQ_METHOD != METHOD_INVITE) {
		LM_ERR("callgate_events: track() is for an INVITE's request route\n");
		return -1;
	}
	if(!record_ok(record))
		return -1;
	call = new_call(record);
	if(call == NULL)
		return -1;
	if(tmb.register_tmcb(msg, 0, TMCB_RESPONSE_FWDED | TMCB_ON_FAILURE, on_reply, call, release_call) <= 0) {
		shm_free(call);
		LM_ERR("callgate_events: the call's replies cannot be followed\n");
		return -1;
	}
	tracked_call = call;   /* (held by tm: follow() right after, in this route, takes it; no later use) */
	tracked_msg = msg->id;
	tracked_pid = msg->pid;
	return 1;
}

/* KSR.callgate_events.follow(record), after dlg_manage(): the end of the message's dialog makes the call's ENDED
 * (1), or -1 (no dialog module, no dialog) */
static int ki_follow(sip_msg_t *msg, str *record)
{
	struct dlg_cell *dlg;
	cg_call_t *call;
	if(!with_dialogs || msg == NULL || !record_ok(record))
		return -1;
	dlg = dlgb.get_dlg(msg);
	if(dlg == NULL)
		return -1;
	if(dlg->state >= DLG_STATE_DELETED) {   /* an earlier attempt's dialog, ended: it makes no end of this call */
		dlgb.release_dlg(dlg);
		return -1;
	}
	call = tracked_call;
	tracked_call = NULL;
	if(call != NULL && tracked_msg == msg->id && tracked_pid == msg->pid) {   /* one record: one ENDED */
		__sync_fetch_and_add(&call->refs, 1);
	} else if((call = new_call(record)) == NULL) {
		dlgb.release_dlg(dlg);
		return -1;
	}
	call->followed = 1;   /* (before the callback: a reply's event in another process may keep from now on) */
	if(dlgb.register_dlgcb(dlg, DLGCB_TERMINATED | DLGCB_EXPIRED, on_dialog_end, call, release_call) != 0) {
		call->followed = 0;
		release_call(call);
		dlgb.release_dlg(dlg);
		LM_ERR("callgate_events: the call's dialog cannot be followed\n");
		return -1;
	}
	dlgb.release_dlg(dlg);
	return 1;
}

#define CG_RELAYED_ROUTE 1      /* relayed(): the Record-Route parameters added */
#define CG_RELAYED_TRACKED 2    /* the replies make the events (track) */
#define CG_RELAYED_FOLLOWED 4   /* the dialog's end makes the ENDED (follow) */

/* KSR.callgate_events.relayed(tenant, dir, caller, called, line, user), after dlg_manage(), in place of what the
 * script's `under_dialog` does around it: the call's record made here (cg_call_record: as `call_record` writes it,
 * for callgate's call id $ci/$cs), its Record-Route parameters added (cgc, cgt), the INVITE's replies tracked
 * (an outbound call's too: the script keeps only its hold's RPC and its talk's timer) and its dialog followed.
 * Each is a Python call (five into Kamailio) and ~50 us of a SIP worker's INVITE with its cold caches, where this is
 * one.  What it did, as the sum of the CG_RELAYED_ flags, or
 * -1 for nothing (a field that is not UTF-8, a call id past CG_CALL_ID_MAX, a record longer than the module
 * prepares, no rr module): the script does the rest itself. */
static int ki_relayed(sip_msg_t *msg, str *tenant, str *dir, str *caller, str *called, str *line, str *user)
{
	char call_id[CG_CALL_ID_MAX], record[CG_PREPARE_MAX], param[2 * (CG_CALL_ID_MAX + CG_PREPARE_MAX) + 16];
	const char *values[CG_RECORD_FIELDS];
	size_t lens[CG_RECORD_FIELDS];
	str callid, number, rec, rr;
	size_t n, id_len;
	int done = 0;
	if(!with_rr || msg == NULL || msg->first_line.type != SIP_REQUEST || msg->REQ_METHOD != METHOD_INVITE)
		return -1;
	if(parse_headers(msg, HDR_CALLID_F | HDR_CSEQ_F, 0) < 0 || msg->callid == NULL || msg->cseq == NULL)
		return -1;
	callid = msg->callid->body;   /* $ci and $cs, as the script reads them */
	number = get_cseq(msg)->number;
	if(callid.len < 0 || number.len < 0 || (size_t)callid.len + 1 + (size_t)number.len > CG_CALL_ID_MAX)
		return -1;
	memcpy(call_id, callid.s, callid.len);
	call_id[callid.len] = '/';
	memcpy(call_id + callid.len + 1, number.s, number.len);
	id_len = (size_t)callid.len + 1 + (size_t)number.len;
	values[0] = call_id, lens[0] = id_len;
	values[1] = tenant->s, lens[1] = (size_t)tenant->len;
	values[2] = dir->s, lens[2] = (size_t)dir->len;
	values[3] = caller->s, lens[3] = (size_t)caller->len;
	values[4] = called->s, lens[4] = (size_t)called->len;
	values[5] = line->s, lens[5] = (size_t)line->len;
	values[6] = user->s, lens[6] = (size_t)user->len;
	n = cg_call_record(values, lens, record, sizeof(record));
	rr.len = (int)cg_route_param(call_id, id_len, tenant->s, (size_t)tenant->len, param, sizeof(param));
	if(n == 0 || rr.len == 0)
		return -1;
	rr.s = param;
	if(rrb.add_rr_param(msg, &rr) == 0)
		done |= CG_RELAYED_ROUTE;
	rec.s = record;
	rec.len = (int)n;
	if(ki_track(msg, &rec) > 0) {
		done |= CG_RELAYED_TRACKED;
		/* (before t_relay: no reply of it is handled yet) */
		tracked_call->outbound = dir->len == 8 && memcmp(dir->s, "outbound", 8) == 0;
	}
	if(ki_follow(msg, &rec) > 0)
		done |= CG_RELAYED_FOLLOWED;
	return done > 0 ? done : -1;
}

/* a journal's file system with fewer free bytes than this is taken as full (a reply's records take one or two KB) */
#define CG_LOW_BYTES 8192

/* whether the journal's file system is full: fewer than CG_LOW_BYTES free to this process (root may use the blocks
 * a file system reserves) */
static int journal_disk_full(void)
{
	struct statvfs fs;
	if(journal_dir == NULL || statvfs(journal_dir, &fs) != 0)
		return 0;
	return (uint64_t)(geteuid() == 0 ? fs.f_bfree : fs.f_bavail) * fs.f_frsize < CG_LOW_BYTES;
}

/* the call this module follows for the transaction at hand (its reply route), or NULL */
static cg_call_t *transaction_call(void)
{
	struct cell *t = tmb.t_gett();
	struct tm_callback *cb;
	if(t == NULL || t == T_UNDEFINED)
		return NULL;
	for(cb = (struct tm_callback *)t->tmcb_hl.first; cb != NULL; cb = cb->next)
		if(cb->callback == on_reply)
			return (cg_call_t *)cb->param;
	return NULL;
}

/* at an outbound call's 200, in its reply route (before this module writes the call's ANSWERED): 1 when that answer
 * will wait for the disk, kept, to be written once it has room (the call keeps events already, or the disk refused
 * the last write or its file system is full, and the call can keep what the disk refuses); -1 when the disk takes
 * the writes, when the call ended already (a 200 after its failure: tm relays a late 2xx), when this module does
 * not follow its dialog (nothing of it is kept), or when nothing more can be kept (CALLGATE_KEPT_MAX, shared memory
 * short: its answer is lost, logged).  The script then sends the answer over RPC too, and the call's end at the
 * dialog's end: kept, the answer would reach callgate only once the disk has room, and past callgate's ring timeout
 * callgate has expired the call unanswered, its talk unbilled. */
static int ki_answer_waits(sip_msg_t *msg)
{
	cg_call_t *call = transaction_call();
	int over, keeps;
	if(call == NULL || kept == NULL)
		return -1;
	lock_get(&call->lock);
	over = call->ended || !call->followed;
	keeps = call->lost || call->listed;
	lock_release(&call->lock);
	if(over)
		return -1;
	if(keeps)
		return 1;
	if(no_room_to_keep()[0])
		return -1;
	return *(volatile int *)&kept->refusing || journal_disk_full() ? 1 : -1;
}

/* clang-format off */
static sr_kemi_t sr_kemi_callgate_events_exports[] = {
	{ str_init("callgate_events"), str_init("track"),
		SR_KEMIP_INT, ki_track,
		{ SR_KEMIP_STR, SR_KEMIP_NONE, SR_KEMIP_NONE,
			SR_KEMIP_NONE, SR_KEMIP_NONE, SR_KEMIP_NONE }
	},
	{ str_init("callgate_events"), str_init("follow"),
		SR_KEMIP_INT, ki_follow,
		{ SR_KEMIP_STR, SR_KEMIP_NONE, SR_KEMIP_NONE,
			SR_KEMIP_NONE, SR_KEMIP_NONE, SR_KEMIP_NONE }
	},
	{ str_init("callgate_events"), str_init("relayed"),
		SR_KEMIP_INT, ki_relayed,
		{ SR_KEMIP_STR, SR_KEMIP_STR, SR_KEMIP_STR,
			SR_KEMIP_STR, SR_KEMIP_STR, SR_KEMIP_STR }
	},
	{ str_init("callgate_events"), str_init("answer_waits"),
		SR_KEMIP_INT, ki_answer_waits,
		{ SR_KEMIP_NONE, SR_KEMIP_NONE, SR_KEMIP_NONE,
			SR_KEMIP_NONE, SR_KEMIP_NONE, SR_KEMIP_NONE }
	},
	{ {0, 0}, {0, 0}, 0, NULL, { 0, 0, 0, 0, 0, 0 } }
};

struct module_exports exports = {
	"callgate_events", DEFAULT_DLFLAGS, 0, 0, 0, 0, 0, mod_init, 0, mod_destroy
};
/* clang-format on */

int mod_register(char *path, int *dlflags, void *p1, void *p2)
{
	sr_kemi_modules_add(sr_kemi_callgate_events_exports);
	return 0;
}
