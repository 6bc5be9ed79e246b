/* SPDX-License-Identifier: Apache-2.0
 *
 * The static /init's stand-ins for five of the Swift standard library's Unicode data lookups
 * (libswiftCore.a, UnicodeScalarProps.cpp: declarations in SwiftShims/UnicodeData.h). The static
 * link (Makefile, `image`: STATIC_LINK) passes `--wrap=SYMBOL` for each, so every reference to
 * SYMBOL resolves to __wrap_SYMBOL below; the original functions and the tables only they read are
 * then referenced by nothing, and --gc-sections drops them (each is its own section in the
 * archive). What goes, measured on the link map (ServiceVM/README.md, "What `/init` is made of"):
 *
 *   _swift_stdlib_getScalarName        names 230 KB, names_scalars 166 KB, words 84 KB,
 *                                      word_indices 54 KB, names_scalar_sets 17 KB
 *   _swift_stdlib_getNameAlias         nameAlias tables 1.4 KB
 *   _swift_stdlib_getAge               ages 14 KB
 *   _swift_stdlib_getScript            scripts 7 KB
 *   _swift_stdlib_getScriptExtensions  script extensions 4 KB
 *
 * Why nothing changes for ExecGate: in the whole link these stubs are referenced only by Swift.o
 * (no ExecGate or package object names them), and in Swift.o only by the public getters
 * `Unicode.Scalar.Properties.name` (and the String-creation specialisations of its closure),
 * `.nameAlias`, `.age`, and the underscored `._script`/`._scriptExtensions` (SPI of the regex
 * engine, which is not linked). Nothing in Swift.o calls those getters (`objdump -dr Swift.o`: no
 * relocation names them outside their own bodies), and no source of ExecGate or of its packages
 * reads them. They stay linked only because Swift.o is one `.text` section and public functions
 * are retained. String comparison, hashing, normalisation (NFC/NFD), grapheme breaking, case
 * mapping, `Character.isNumber`/`isLetter`/`isWhitespace` and the numeric values use other
 * stubs, which are not wrapped.
 *
 * The behaviour change, in this binary only (the dynamic host build links no wrapper and keeps the
 * real tables; these functions are then unreferenced and --gc-sections drops them):
 * `Unicode.Scalar.Properties.name` is nil except for the names the standard library computes
 * without a table (Hangul syllables, CJK/Tangut/Nushu/... ideographs, variation selectors);
 * `nameAlias` and `age` are nil for every scalar; `_script` answers 255 ("not found", the stub's
 * own sentinel) and `_scriptExtensions` none. Each wrapper returns exactly the value the original
 * returns for a scalar it has no entry for, so no caller can trap on it.
 */
#include <stddef.h>
#include <stdint.h>

intptr_t __wrap__swift_stdlib_getScalarName(uint32_t scalar, uint8_t *buffer, intptr_t capacity) {
    (void)scalar;
    (void)buffer;
    (void)capacity;
    return 0; /* bytes written: the name getter maps an empty name to nil */
}

const char *__wrap__swift_stdlib_getNameAlias(uint32_t scalar) {
    (void)scalar;
    return NULL; /* no alias */
}

uint16_t __wrap__swift_stdlib_getAge(uint32_t scalar) {
    (void)scalar;
    return UINT16_MAX; /* unassigned: `age` is nil */
}

uint8_t __wrap__swift_stdlib_getScript(uint32_t scalar) {
    (void)scalar;
    return UINT8_MAX; /* the original's "not found" */
}

const uint8_t *__wrap__swift_stdlib_getScriptExtensions(uint32_t scalar, uint8_t *count) {
    (void)scalar;
    (void)count;
    return NULL; /* no extensions; the caller then uses the script alone */
}
