/*
 * cg_event: a call's events, encoded as callgate_kemi.py's `events_of` makes them (see cg_event.h).
 */
#include "cg_event.h"

#include <string.h>
#include <zlib.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the journal's records are little-endian: this file writes them as the machine lays them out"
#endif

#pragma pack(push, 1)
typedef struct {     /* callgate_spool._RECORD */
	uint32_t magic, length, crc;
	int64_t created_ns;
	double wall;
	uint16_t key, call;
} cg_record_t;

typedef struct {     /* a prepared call: then its call id, head, ringing fields and user, in that order */
	uint32_t call, head, extra, user;
	uint8_t outbound;
} cg_prepared_t;
#pragma pack(pop)

enum { F_CALL, F_TENANT, F_DIR, F_USER, F_CALLER, F_CALLED, F_LINE, F_COUNT };
static const char *const field_names[F_COUNT] = {"call", "tenant", "dir", "user", "caller", "called", "line"};

typedef struct {
	const char *s;
	size_t len;
} span_t;

static int hex4(const char *p, const char *end, unsigned *v)
{
	unsigned x = 0;
	int i;
	if(end - p < 4)
		return -1;
	for(i = 0; i < 4; i++) {
		char c = p[i];
		x <<= 4;
		if(c >= '0' && c <= '9')
			x |= (unsigned)(c - '0');
		else if(c >= 'a' && c <= 'f')
			x |= (unsigned)(c - 'a' + 10);
		else if(c >= 'A' && c <= 'F')
			x |= (unsigned)(c - 'A' + 10);
		else
			return -1;
	}
	*v = x;
	return 0;
}

static char *put_utf8(char *o, unsigned cp)
{
	if(cp < 0x80) {
		*o++ = (char)cp;
	} else if(cp < 0x800) {
		*o++ = (char)(0xC0 | (cp >> 6));
		*o++ = (char)(0x80 | (cp & 0x3F));
	} else if(cp < 0x10000) {
		*o++ = (char)(0xE0 | (cp >> 12));
		*o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
		*o++ = (char)(0x80 | (cp & 0x3F));
	} else {
		*o++ = (char)(0xF0 | (cp >> 18));
		*o++ = (char)(0x80 | ((cp >> 12) & 0x3F));
		*o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
		*o++ = (char)(0x80 | (cp & 0x3F));
	}
	return o;
}

/* the JSON string at *p (its opening quote), as json.dumps writes one (ASCII, escaped), decoded to UTF-8 at *o;
 * both moved past it.  -1: anything else (the record is then written raw, for Python to read) */
static int read_string(const char **p, const char *end, char **o)
{
	const char *s = *p;
	char *out = *o;
	unsigned cp, low;
	if(s >= end || *s++ != '"')
		return -1;
	while(s < end && *s != '"') {
		unsigned char c = (unsigned char)*s++;
		if(c < 0x20 || c > 0x7E)
			return -1;   /* json.dumps escapes these (ensure_ascii) */
		if(c != '\\') {
			*out++ = (char)c;
			continue;
		}
		if(s >= end)
			return -1;
		switch(*s++) {
			case '"': *out++ = '"'; break;
			case '\\': *out++ = '\\'; break;
			case '/': *out++ = '/'; break;
			case 'b': *out++ = '\b'; break;
			case 'f': *out++ = '\f'; break;
			case 'n': *out++ = '\n'; break;
			case 'r': *out++ = '\r'; break;
			case 't': *out++ = '\t'; break;
			case 'u':
				if(hex4(s, end, &cp) < 0)
					return -1;
				s += 4;
				if(cp >= 0xDC00 && cp <= 0xDFFF)
					return -1;   /* a lone low surrogate: no UTF-8 (Python refuses the message) */
				if(cp >= 0xD800 && cp <= 0xDBFF) {
					if(end - s < 6 || s[0] != '\\' || s[1] != 'u' || hex4(s + 2, end, &low) < 0
							|| low < 0xDC00 || low > 0xDFFF)
						return -1;
					s += 6;
					cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
				}
				out = put_utf8(out, cp);
				break;
			default:
				return -1;
		}
	}
	if(s >= end)
		return -1;
	*p = s + 1;
	*o = out;
	return 0;
}

static char *put_varint(char *p, uint64_t v)
{
	while(v >= 0x80) {
		*p++ = (char)(v | 0x80);
		v >>= 7;
	}
	*p++ = (char)v;
	return p;
}

/* a string field (proto3: an empty one is not written) */
static char *put_string(char *p, unsigned field, const char *s, size_t len)
{
	if(len == 0)
		return p;
	*p++ = (char)(field << 3 | 2);
	p = put_varint(p, len);
	memcpy(p, s, len);
	return p + len;
}

size_t cg_prepare(const char *record, size_t len, char *out, size_t cap)
{
	char scratch[CG_PREPARE_MAX];
	char *o = scratch, *w;
	const char *p = record, *end = record + len;
	span_t f[F_COUNT];
	cg_prepared_t h;
	int i;
	if(len > CG_PREPARE_MAX || cap < CG_PREPARED_ROOM(len) || len < 2 || *p++ != '{')
		return 0;
	memset(f, 0, sizeof(f));
	for(i = 0; i < F_COUNT; i++)
		f[i].s = NULL;
	if(*p == '}')
		return 0;   /* no call id */
	for(;;) {
		char *key = o, *value;
		size_t key_len;
		int which = -1, k;
		if(read_string(&p, end, &o) < 0)
			return 0;
		key_len = (size_t)(o - key);
		if(p >= end || *p++ != ':')
			return 0;
		value = o;
		if(read_string(&p, end, &o) < 0)
			return 0;   /* (a value that is no string too: `call_record` writes strings only) */
		for(k = 0; k < F_COUNT; k++)
			if(strlen(field_names[k]) == key_len && memcmp(field_names[k], key, key_len) == 0)
				which = k;
		if(which >= 0) {
			if(f[which].s != NULL)
				return 0;   /* twice (json.loads keeps the last: leave such a record to it) */
			f[which].s = value;
			f[which].len = (size_t)(o - value);
		}
		if(p >= end)
			return 0;
		if(*p == ',') {
			p++;
			continue;
		}
		if(*p++ != '}' || p != end)
			return 0;
		break;
	}
	/* `events_of` refuses a record without a call id, and its ENDED without a tenant: left to it */
	if(f[F_CALL].s == NULL || f[F_CALL].len == 0 || f[F_TENANT].s == NULL || f[F_TENANT].len == 0
			|| f[F_CALL].len + sizeof(":ANSWERED") > 0xFFFF)
		return 0;
	for(i = 0; i < F_COUNT; i++)
		if(f[i].s == NULL)
			f[i].s = "";
	if(f[F_DIR].len == 0) {   /* `call.get("dir") or "inbound"` */
		f[F_DIR].s = "inbound";
		f[F_DIR].len = 7;
	}
	w = out + sizeof(h);
	memcpy(w, f[F_CALL].s, f[F_CALL].len);
	w += f[F_CALL].len;
	h.call = (uint32_t)f[F_CALL].len;
	h.head = (uint32_t)(put_string(put_string(w, 1, f[F_TENANT].s, f[F_TENANT].len), 2, f[F_CALL].s,
								   f[F_CALL].len) - w);
	w += h.head;
	h.extra = (uint32_t)(put_string(put_string(put_string(put_string(w, 6, f[F_DIR].s, f[F_DIR].len), 7,
								   f[F_CALLER].s, f[F_CALLER].len), 8, f[F_CALLED].s, f[F_CALLED].len), 9,
								   f[F_LINE].s, f[F_LINE].len) - w);
	w += h.extra;
	memcpy(w, f[F_USER].s, f[F_USER].len);
	w += f[F_USER].len;
	h.user = (uint32_t)f[F_USER].len;
	h.outbound = f[F_DIR].len == 8 && memcmp(f[F_DIR].s, "outbound", 8) == 0;
	memcpy(out, &h, sizeof(h));
	return (size_t)(w - out);
}

int cg_utf8_valid(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s, *end = p + len;
	while(p < end) {
		unsigned c = *p++, cp, n, i;
		if(c < 0x80)
			continue;
		if(c >= 0xC2 && c <= 0xDF)
			n = 1, cp = c & 0x1F;
		else if(c >= 0xE0 && c <= 0xEF)
			n = 2, cp = c & 0x0F;
		else if(c >= 0xF0 && c <= 0xF4)
			n = 3, cp = c & 0x07;
		else
			return 0;
		if((size_t)(end - p) < n)
			return 0;
		for(i = 0; i < n; i++) {
			if((p[i] & 0xC0) != 0x80)
				return 0;
			cp = cp << 6 | (p[i] & 0x3F);
		}
		p += n;
		if((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
			return 0;
	}
	return 1;
}

/* the characters of valid UTF-8: its bytes that begin one */
static size_t utf8_chars(const char *s, size_t len)
{
	size_t n = 0, i;
	for(i = 0; i < len; i++)
		n += ((unsigned char)s[i] & 0xC0) != 0x80;
	return n;
}

static const struct {
	const char *name;
	size_t len;
	unsigned code;   /* CallEventRequest.Kind */
} kinds_known[] = {{"RINGING", 7, 1}, {"ANSWERED", 8, 2}, {"ENDED", 5, 4}};

size_t cg_event_records(const char *prepared, size_t prepared_len, const char *kinds, const char *outcome,
		const char *user, size_t user_len, int64_t at, int64_t mono_ns, double wall, char *out, size_t cap)
{
	cg_prepared_t h;
	const char *call, *head, *extra, *own_user, *k = kinds;
	size_t outcome_len = strlen(outcome), used = 0;
	if(prepared_len < sizeof(h))
		return 0;
	memcpy(&h, prepared, sizeof(h));
	if(sizeof(h) + (size_t)h.call + h.head + h.extra + h.user != prepared_len)
		return 0;
	call = prepared + sizeof(h);
	head = call + h.call;
	extra = head + h.head;
	own_user = extra + h.extra;
	if(h.outbound) {   /* an outbound call names its caller, whatever the reply says */
		user = own_user;
		user_len = h.user;
	} else if(user == NULL || user_len == 0 || !cg_utf8_valid(user, user_len)
			|| utf8_chars(user, user_len) > CG_USER_MAX_CHARS) {   /* (callgate would refuse the events) */
		user = h.user ? own_user : "unknown";
		user_len = h.user ? h.user : 7;
	}
	while(*k) {
		cg_record_t r;
		const char *comma = strchr(k, ',');
		size_t kind_len = comma ? (size_t)(comma - k) : strlen(k), need, i;
		unsigned code = 0;
		char *p, *payload;
		for(i = 0; i < sizeof(kinds_known) / sizeof(kinds_known[0]); i++)
			if(kinds_known[i].len == kind_len && memcmp(kinds_known[i].name, k, kind_len) == 0)
				code = kinds_known[i].code;
		if(code == 0)
			return 0;
		/* the most this event takes: its header, key, call and request (each field's tag and length: 6) */
		need = sizeof(r) + (h.call + 1 + kind_len) + h.call + h.head + 2 + (6 + user_len) + 11 + h.extra
			   + (6 + outcome_len);
		if(cap - used < need)
			return 0;
		payload = p = out + used + sizeof(r);
		memcpy(p, call, h.call);
		p += h.call;
		*p++ = ':';
		memcpy(p, k, kind_len);
		p += kind_len;
		memcpy(p, call, h.call);
		p += h.call;
		memcpy(p, head, h.head);
		p += h.head;
		*p++ = 3 << 3;   /* kind (varint) */
		*p++ = (char)code;
		if(code != 4)
			p = put_string(p, 4, user, user_len);
		if(at != 0) {
			*p++ = 5 << 3;   /* at (varint) */
			p = put_varint(p, (uint64_t)at);
		}
		if(code == 1) {
			memcpy(p, extra, h.extra);
			p += h.extra;
		}
		if(code == 4)
			p = put_string(p, 10, outcome, outcome_len);
		r.magic = CG_EVENT_MAGIC;
		r.length = (uint32_t)(p - payload);
		r.crc = (uint32_t)crc32(0L, (const Bytef *)payload, (uInt)r.length);
		r.created_ns = mono_ns;
		r.wall = wall;
		r.key = (uint16_t)(h.call + 1 + kind_len);
		r.call = (uint16_t)h.call;
		memcpy(out + used, &r, sizeof(r));
		used = (size_t)(p - out);
		k += kind_len;
		if(*k == ',' && *++k == '\0')
			return 0;   /* "RINGING,": `events_of` refuses the empty kind */
	}
	return used;
}

static const char hex[] = "0123456789abcdef";   /* lower case, as Python writes \u escapes and bytes.hex() */

/* json.dumps's string (ensure_ascii: encode_basestring_ascii) of s, valid UTF-8 of len bytes, at o: its end.  At
 * most 6 bytes a byte of s (a control character: \u0000; a character of 4 bytes: two escapes of 6) and 2. */
static char *put_json_string(char *o, const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s, *end = p + len;
	unsigned units[2], n, i, cp;
	*o++ = '"';
	while(p < end) {
		unsigned c = *p++;
		if(c >= 0x20 && c <= 0x7E && c != '"' && c != '\\') {
			*o++ = (char)c;
			continue;
		}
		switch(c) {
			case '"': *o++ = '\\'; *o++ = '"'; continue;
			case '\\': *o++ = '\\'; *o++ = '\\'; continue;
			case '\b': *o++ = '\\'; *o++ = 'b'; continue;
			case '\f': *o++ = '\\'; *o++ = 'f'; continue;
			case '\n': *o++ = '\\'; *o++ = 'n'; continue;
			case '\r': *o++ = '\\'; *o++ = 'r'; continue;
			case '\t': *o++ = '\\'; *o++ = 't'; continue;
			default: break;
		}
		if(c < 0x80) {   /* another control character, or DEL */
			cp = c;
		} else {         /* (valid UTF-8: the caller checked it) */
			n = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : 1;
			cp = c & (0x3Fu >> n);
			for(i = 0; i < n; i++)
				cp = cp << 6 | (*p++ & 0x3Fu);
		}
		n = 0;
		if(cp >= 0x10000) {   /* a surrogate pair, as Python writes one */
			cp -= 0x10000;
			units[n++] = 0xD800 | (cp >> 10);
			units[n++] = 0xDC00 | (cp & 0x3FF);
		} else {
			units[n++] = cp;
		}
		for(i = 0; i < n; i++) {
			*o++ = '\\';
			*o++ = 'u';
			*o++ = hex[units[i] >> 12 & 0xF];
			*o++ = hex[units[i] >> 8 & 0xF];
			*o++ = hex[units[i] >> 4 & 0xF];
			*o++ = hex[units[i] & 0xF];
		}
	}
	*o++ = '"';
	return o;
}

size_t cg_call_record(const char *const values[], const size_t lens[], char *out, size_t cap)
{
	static const char *const keys[CG_RECORD_FIELDS] = {"call", "tenant", "dir", "caller", "called", "line",
			"user"};
	size_t need = 2, i, key_len;
	char *o = out;
	for(i = 0; i < CG_RECORD_FIELDS; i++) {
		if(values[i] == NULL || lens[i] > cap || !cg_utf8_valid(values[i], lens[i]))
			return 0;
		need += strlen(keys[i]) + 4 + 6 * lens[i] + 2;   /* "key":"value", */
	}
	if(need > cap)
		return 0;
	*o++ = '{';
	for(i = 0; i < CG_RECORD_FIELDS; i++) {
		if(i > 0)
			*o++ = ',';
		key_len = strlen(keys[i]);
		*o++ = '"';
		memcpy(o, keys[i], key_len);
		o += key_len;
		*o++ = '"';
		*o++ = ':';
		o = put_json_string(o, values[i], lens[i]);
	}
	*o++ = '}';
	return (size_t)(o - out);
}

static char *put_hex(char *o, const char *s, size_t len)
{
	size_t i;
	for(i = 0; i < len; i++) {
		*o++ = hex[(unsigned char)s[i] >> 4];
		*o++ = hex[(unsigned char)s[i] & 0xF];
	}
	return o;
}

size_t cg_route_param(const char *call, size_t call_len, const char *tenant, size_t tenant_len, char *out,
		size_t cap)
{
	char *o = out;
	if(call_len > cap || tenant_len > cap || 2 * (call_len + tenant_len) + 10 > cap)
		return 0;
	memcpy(o, ";cgc=", 5);
	o = put_hex(o + 5, call, call_len);
	memcpy(o, ";cgt=", 5);
	o = put_hex(o + 5, tenant, tenant_len);
	return (size_t)(o - out);
}
