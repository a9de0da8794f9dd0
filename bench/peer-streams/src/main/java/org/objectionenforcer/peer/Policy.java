package org.objectionenforcer.peer;

import java.util.Set;

/**
 * The training policy (streams/core/policy.py): the first rule a post fails, in order NOT_PUBLIC,
 * MINOR, COUNTRY_EXCLUDED, PLATFORM_EXCLUDED, OBJECTED; else ELIGIBLE. Reasons and outcomes
 * are the indexes of the Decision schema's enums. The launcher (bench/peer_streams.py) passes
 * the policy file's values, validated by the enforcer's own loader.
 */
final class Policy {
  static final int ELIGIBLE = 0, NOT_PUBLIC = 1, MINOR = 2, COUNTRY_EXCLUDED = 3;
  static final int PLATFORM_EXCLUDED = 4, OBJECTED = 5;
  static final int PUBLISHED = 0, BLOCKED = 1, RETRACTED = 2;

  final String version;
  /** The version as an Avro string (length and UTF-8), written into every output. */
  final byte[] versionAvro;

  private final Set<String> countries;
  private final boolean[] visibilities = new boolean[Avro.VISIBILITIES.length];
  private final boolean[] platforms = new boolean[Avro.PLATFORMS.length];
  private final boolean adultsOnly;

  Policy(
      String version,
      Set<String> countries,
      Set<String> visibilities,
      Set<String> platforms,
      boolean adultsOnly) {
    if (version == null || version.strip().isEmpty()) {
      throw new IllegalArgumentException("the policy version must be a non-empty string");
    }
    this.version = version.strip();
    this.versionAvro = new Avro.Writer(64).writeString(this.version).toByteArray();
    for (String c : countries) {
      if (!c.matches("[A-Z]{2}")) {
        throw new IllegalArgumentException("policy country " + c + " is not an alpha-2 code");
      }
    }
    this.countries = Set.copyOf(countries);
    mark(visibilities, Avro.VISIBILITIES, this.visibilities, "visibility");
    mark(platforms, Avro.PLATFORMS, this.platforms, "platform");
    this.adultsOnly = adultsOnly;
  }

  private static void mark(Set<String> given, String[] symbols, boolean[] into, String what) {
    for (String g : given) {
      int i = java.util.Arrays.asList(symbols).indexOf(g);
      if (i < 0) {
        throw new IllegalArgumentException("unknown policy " + what + " " + g);
      }
      into[i] = true;
    }
  }

  int reason(int visibility, boolean adult, String country, int platform, boolean objected) {
    if (!visibilities[visibility]) {
      return NOT_PUBLIC;
    }
    if (adultsOnly && !adult) {
      return MINOR;
    }
    if (!countries.contains(country)) {
      return COUNTRY_EXCLUDED;
    }
    if (!platforms[platform]) {
      return PLATFORM_EXCLUDED;
    }
    return objected ? OBJECTED : ELIGIBLE;
  }

  @Override
  public String toString() {
    return version;
  }
}
