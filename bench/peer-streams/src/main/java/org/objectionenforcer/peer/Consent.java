package org.objectionenforcer.peer;

import java.util.Arrays;
import java.util.Map;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;

/**
 * One user's consent state and how objection events change it (streams/core/consent.py): per
 * slot (every platform, FACEBOOK, INSTAGRAM) the winning event so far, the event with the
 * greatest (occurred_at, OBJECT over WITHDRAW, event_id); a platform is objected when the
 * greater of its own mark and the every-platform mark is an OBJECT; the last 64 event ids
 * seen are remembered and a repeated one changes nothing. Immutable: {@link #receive} returns
 * a new state, with {@link #last} saying what the event did (for the retraction step; not
 * stored).
 */
final class Consent {
  static final int ALL = 0; // slot of an event for every platform; platform p is slot p + 1
  static final int SEEN_LIMIT = 64;
  static final int APPLIED = 0, IGNORED_REPEATED_EVENT_ID = 1, IGNORED_OLDER = 2;
  static final int CLAMPED_FROM_FUTURE = 3;

  /** The winning event of a slot. */
  record Mark(long occurredAt, boolean objected, String eventId) implements Comparable<Mark> {
    @Override
    public int compareTo(Mark o) {
      int c = Long.compare(occurredAt, o.occurredAt);
      if (c != 0) {
        return c;
      }
      c = Boolean.compare(objected, o.objected);
      return c != 0 ? c : compareCodePoints(eventId, o.eventId);
    }
  }

  /** What the last event did: as given, as applied, its receipt outcome, and when. */
  record Applied(Records.Objection event, long appliedOccurredAt, int outcome, long now) {}

  static final Consent EMPTY = new Consent(new Mark[3], new String[0], null);

  final Mark[] marks; // by slot, null: none
  final String[] seen; // oldest first
  final transient Applied last;

  private Consent(Mark[] marks, String[] seen, Applied last) {
    this.marks = marks;
    this.seen = seen;
    this.last = last;
  }

  /** Python's string order: by code point (Java's compareTo orders by UTF-16 unit). */
  static int compareCodePoints(String a, String b) {
    int n = Math.min(a.length(), b.length());
    for (int i = 0; i < n; i++) {
      char x = a.charAt(i);
      char y = b.charAt(i);
      if (x != y) {
        if (Character.isSurrogate(x) || Character.isSurrogate(y)) {
          return Integer.compare(a.codePointAt(i), b.codePointAt(i));
        }
        return x - y;
      }
    }
    return a.length() - b.length();
  }

  /** True when the user objects on platform {@code p} (0 FACEBOOK, 1 INSTAGRAM). */
  boolean objected(int p) {
    Mark own = marks[p + 1];
    Mark every = marks[ALL];
    if (own == null) {
      return every != null && every.objected;
    }
    if (every == null || own.compareTo(every) > 0) {
      return own.objected;
    }
    return every.objected;
  }

  /** The event id of the objection in force on platform {@code p} (enforcement._objection_cause). */
  String cause(int p) {
    Mark own = marks[p + 1];
    Mark every = marks[ALL];
    if (own == null && every == null) {
      return "unknown";
    }
    if (own == null) {
      return every.eventId;
    }
    if (every == null) {
      return own.eventId;
    }
    return own.compareTo(every) >= 0 ? own.eventId : every.eventId;
  }

  private boolean sawId(String eventId) {
    for (String s : seen) {
      if (s.equals(eventId)) {
        return true;
      }
    }
    return false;
  }

  /** consent.apply: the state after an event dated {@code occurredAt}. */
  private Consent apply(Records.Objection e, long occurredAt) {
    if (sawId(e.eventId)) {
      return this;
    }
    int slot = e.platform < 0 ? ALL : e.platform + 1;
    Mark mark = new Mark(occurredAt, e.action == 0, e.eventId);
    Mark[] m = marks.clone();
    if (m[slot] == null || mark.compareTo(m[slot]) > 0) {
      m[slot] = mark;
    }
    Mark every = m[ALL];
    if (every != null) { // platform marks older than the every-platform mark no longer matter
      for (int s = 1; s < m.length; s++) {
        if (m[s] != null && m[s].compareTo(every) < 0) {
          m[s] = null;
        }
      }
    }
    String[] s;
    if (seen.length < SEEN_LIMIT) {
      s = Arrays.copyOf(seen, seen.length + 1);
    } else {
      s = Arrays.copyOfRange(seen, 1, seen.length + 1);
    }
    s[s.length - 1] = e.eventId;
    return new Consent(m, s, null);
  }

  /**
   * consent.receive with enforcement.as_applied: the state after event {@code e} read at
   * {@code now} (an event dated more than {@code maxSkewMs} ahead is applied at {@code now}),
   * carrying what it did.
   */
  Consent receive(Records.Objection e, long now, long maxSkewMs) {
    long occurredAt = e.occurredAt > now + maxSkewMs ? now : e.occurredAt;
    Consent next = apply(e, occurredAt);
    int outcome;
    if (sawId(e.eventId) || markId(e.eventId)) {
      outcome = IGNORED_REPEATED_EVENT_ID;
    } else if (Arrays.equals(next.marks, marks)) {
      outcome = IGNORED_OLDER;
    } else {
      outcome = occurredAt != e.occurredAt ? CLAMPED_FROM_FUTURE : APPLIED;
    }
    return new Consent(next.marks, next.seen, new Applied(e, occurredAt, outcome, now));
  }

  private boolean markId(String eventId) {
    for (Mark m : marks) {
      if (m != null && m.eventId.equals(eventId)) {
        return true;
      }
    }
    return false;
  }

  /** The state as stored: marks (slot, occurred_at, objected, event id), then the ids seen. */
  static final class ConsentSerde implements Serializer<Consent>, Deserializer<Consent> {
    @Override
    public void configure(Map<String, ?> configs, boolean isKey) {}

    @Override
    public void close() {}

    @Override
    public byte[] serialize(String topic, Consent c) {
      if (c == null) {
        return null;
      }
      Avro.Writer w = new Avro.Writer(256);
      int count = 0;
      for (Mark m : c.marks) {
        count += m == null ? 0 : 1;
      }
      w.writeInt(count);
      for (int slot = 0; slot < c.marks.length; slot++) {
        Mark m = c.marks[slot];
        if (m != null) {
          w.writeInt(slot).writeLong(m.occurredAt).writeInt(m.objected ? 1 : 0);
          w.writeString(m.eventId);
        }
      }
      w.writeInt(c.seen.length);
      for (String s : c.seen) {
        w.writeString(s);
      }
      return w.toByteArray();
    }

    @Override
    public Consent deserialize(String topic, byte[] data) {
      if (data == null) {
        return null;
      }
      try {
        Avro.Reader r = new Avro.Reader(data, 0, "consent state");
        Mark[] m = new Mark[3];
        for (int n = r.readInt(); n > 0; n--) {
          int slot = r.readInt();
          m[slot] = new Mark(r.readLong(), r.readInt() == 1, r.readString());
        }
        String[] s = new String[r.readInt()];
        for (int i = 0; i < s.length; i++) {
          s[i] = r.readString();
        }
        r.end();
        return new Consent(m, s, null);
      } catch (Avro.DecodeError | RuntimeException e) {
        throw new IllegalStateException("unreadable consent state: " + e.getMessage(), e);
      }
    }

    static Serde<Consent> serde() {
      return Serdes.serdeFrom(new ConsentSerde(), new ConsentSerde());
    }
  }

  @Override
  public String toString() {
    return Arrays.toString(marks) + ", " + seen.length + " ids seen";
  }
}
