# The contract of the compiled core: the C layout of a compiled snapshot and
# of a decision.  Other Cython modules (the server's batch path) cimport these
# to decide without touching Python objects.

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef struct Container:
    uint64_t key              # high 48 bits of the values it holds; UINT64_MAX: empty slot
    uint32_t off              # byte offset of its data in the serialized buffer
    uint32_t meta             # kind << 28 | count (array: values, run: runs)


cdef struct Slot:
    uint64_t key
    int32_t index
    int32_t pad


cdef struct Roaring:
    # A roaring64 bitmap read in place from its portable serialization.  Two
    # indexes are derived on load: an open-addressing table of its containers
    # (one probe instead of a binary search over them) and a one-hash bit
    # filter over its values that turns most non-members away in one access.
    const uint8_t* buf
    const Container* table
    uint64_t table_mask
    const uint64_t* filter
    uint64_t filter_mask      # in bits
    int64_t n                 # containers


cdef struct Country:
    uint64_t cc               # country code as a number (1, 44, ...)
    int32_t cc_len
    int32_t ip_len
    int32_t np_len
    uint32_t lengths          # bit n set: n digits is a national length
    char ip[8]
    char np[8]


cdef struct Snap:
    # tenant
    int32_t active
    int32_t block_anonymous
    int32_t backup_line       # -1: no backup
    uint64_t backup_number
    int32_t default_callerid  # number index, -1: none
    int32_t pickup_len
    char pickup[16]
    # numbers (index i) and their open-addressing table E.164 -> index
    int32_t n_numbers
    const uint64_t* num_e164
    const int32_t* num_line
    const int32_t* num_country
    const uint8_t* num_flags  # 1 requires documents, 2 approved, 4 inbound only
    const int32_t* num_sched  # -1: no schedule
    const uint8_t* num_action # 0 reject, 1 voicemail, 2 forward
    const uint64_t* num_fwd
    const int32_t* num_group  # -1: no route_to
    const Slot* nt            # key 0: empty slot
    uint64_t nt_mask
    const Country* countries
    # schedules and zones
    const int32_t* sched_zone
    const uint64_t* sched_week  # 158 words per schedule: bit = minute of the week
    const int32_t* sched_hol_base
    const int32_t* hol_days     # local days since 1970-01-01, sorted per schedule
    const int32_t* zone_base    # zone z: segments zone_base[z] .. zone_base[z+1]
    const int32_t* zone_bucket  # ZONE_BUCKETS per zone: the segment in force when each bucket starts
    const int64_t* zone_starts
    const int32_t* zone_offsets
    # lines and rates: a digit trie per line
    const int32_t* line_root
    const uint8_t* line_format  # how each line's trunk sends callers: codes.CALLER_FORMATS index
    const int32_t* trie_child   # 10 per node, -1: none
    const int32_t* trie_rate    # -1: no rate ends here
    const int64_t* rate_pm      # per minute, micro-units
    const int32_t* rate_inc
    # users: table of FNV-1a hashes of the id -> index, ids kept to compare
    int32_t n_users
    const uint64_t* ut_keys
    const int32_t* ut_vals
    uint64_t ut_mask
    const uint8_t* user_blob
    const int32_t* user_off
    const int32_t* user_callerid
    const uint64_t* user_groups # group_words per user
    int32_t group_words
    # caller lists
    Roaring blacklist
    Roaring offhours_blacklist


cdef struct Out:
    uint8_t verdict
    uint8_t reason
    uint16_t sip
    int32_t line
    int32_t group
    int32_t callerid          # number index
    int32_t rate
    int32_t call              # index into the ringing calls
    uint64_t caller           # 0: none / withheld
    uint64_t caller_alt       # auto: the caller's second reading (its digits as E.164), 0: none
    uint8_t alt_listed        # 1: the second reading is the one a list holds (it decided)
    uint64_t called
    uint64_t target
    int64_t max_duration


cdef struct InRow:            # one row of an inbound batch result (INBOUND_DTYPE)
    uint64_t target
    int32_t line
    int32_t group
    uint16_t sip
    uint8_t verdict
    uint8_t reason


cdef struct OutRow:           # one row of an outbound batch result (OUTBOUND_DTYPE)
    int64_t max_duration
    int32_t line
    int32_t callerid
    int32_t rate
    uint16_t sip
    uint8_t verdict
    uint8_t reason


cdef class CoreSnapshot:
    cdef Snap s
    cdef readonly dict arrays
    cdef readonly dict meta
    cdef readonly long long version
    cdef readonly str tenant
    cdef object _decimals
    cdef object _members
    cdef dict _pinned         # the arrays bound, kept alive whatever is later done to `arrays`
    cdef void _bind(self, CoreSnapshot source) except *
    cdef void _bind_roaring(self, Roaring* r, const Roaring* was, str name, CoreSnapshot source) except *


cdef void decide_inbound(const Snap* s, const char* caller, Py_ssize_t nc, const char* called,
                         Py_ssize_t nd, int64_t at, Out* o) noexcept nogil
cdef void decide_outbound(const Snap* s, const char* user, Py_ssize_t nu, const char* dest,
                          Py_ssize_t nd, int64_t at, int64_t balance, Out* o) noexcept nogil
