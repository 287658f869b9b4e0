/*
 * cg_event: a call's events as callgate's spool sends them (CallEventRequest, encoded), made in C from the call's
 * record, so that the spool's sender sends them as read, with no conversion in Python.  No Kamailio in here: the
 * tests build this file alone and hold it to callgate_kemi.py's `events_of` (tests/test_kamailio_event_codec.py).
 *
 * The record is what callgate_kemi.py's `call_record` makes: json.dumps of a flat object of strings, in ASCII
 * (non-ASCII and control characters escaped).  A record this code does not read exactly as json.loads would (any
 * other shape, a lone surrogate, no call id or tenant, ...) is not prepared: the caller writes the raw record
 * instead, and the sender makes the events of it in Python, as before.
 */
#ifndef CG_EVENT_H
#define CG_EVENT_H

#include <stddef.h>
#include <stdint.h>

#define CG_EVENT_MAGIC 0x314A4743u      /* callgate_spool._MAGIC: an event (key, call, request) */
#define CG_PREPARE_MAX 4096             /* records longer than this are not prepared (written raw) */
#define CG_USER_MAX_CHARS 256           /* the longest user name callgate takes (callgate_kemi.USER_MAX): a reply's
                                           longer one names the record's user */

/* the record's events' common parts, encoded (a prepared call): CG_PREPARED_ROOM(len) bytes at most */
#define CG_PREPARED_ROOM(len) (4 * (size_t)(len) + 64)

/* prepare the call `record` (len bytes) into `out` (cap bytes): its size, or 0 when it cannot be (write raw) */
size_t cg_prepare(const char *record, size_t len, char *out, size_t cap);

/* the fields of a call's record, in the order cg_call_record writes them (callgate_kemi.py `call_record`) */
#define CG_RECORD_FIELDS 7              /* call, tenant, dir, caller, called, line, user */

/* the call's record as callgate_kemi.py's `call_record` writes it for these CG_RECORD_FIELDS values (each lens[i]
 * bytes) given in this order (the script's calls give them so): JSON, ASCII, escaped as json.dumps does; into
 * `out` (cap bytes): its size, or 0 when a value is not UTF-8 or the record takes more than cap (the script then
 * makes it itself) */
size_t cg_call_record(const char *const values[], const size_t lens[], char *out, size_t cap);

/* the call's Record-Route parameters as the script adds them (";cgc=" the call id's bytes in hex, ";cgt=" the
 * tenant's): its size, or 0 when it takes more than cap */
size_t cg_route_param(const char *call, size_t call_len, const char *tenant, size_t tenant_len, char *out,
		size_t cap);

/* whether s (len bytes) is UTF-8 as Python's strict decoder takes it (no overlong form, surrogate or > U+10FFFF) */
int cg_utf8_valid(const char *s, size_t len);

/* the bytes of the journal records (callgate_spool._RECORD, then key, call, request) of the events `kinds`
 * ("RINGING", "RINGING,ANSWERED", "ENDED", ...) of a prepared call, with `outcome` (ENDED) and who rings or talks
 * as the reply names them (`user`, user_len; NULL, not UTF-8 or too long: the record's user), at `at` (wall seconds), stamped `mono_ns` and `wall`;
 * into `out` (cap bytes): their size, or 0 when they cannot be made here (write the raw record). */
size_t cg_event_records(const char *prepared, size_t prepared_len, const char *kinds, const char *outcome,
		const char *user, size_t user_len, int64_t at, int64_t mono_ns, double wall, char *out, size_t cap);

#endif
