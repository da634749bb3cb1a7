"""The order of the per-entry sums before the final hash (spec §4-5).

Without duplicate names the sums are sorted as strings. Names are compared after
Go ``path.Clean`` (docker 1.12 - 17.x). With duplicates TarSum's ``Less`` is not a
strict weak order, so the result depends on the sort algorithm; this project ports
Go's pre-1.6 ``sort.Sort`` (spec §10).
"""

from __future__ import annotations


def order_sums(sums: list[str], names: list[bytes]) -> list[str]:
    """``sums`` (entry ``i`` named ``names[i]``) in TarSum's final order."""
    seen: set[bytes] = set()
    cleaned: list[bytes] = []
    dups = False
    for name in names:
        c = name if _is_clean(name) else _go_clean(name)
        if c in seen:
            dups = True
        seen.add(c)
        cleaned.append(c)
    if not dups:
        # Without duplicates Less is a plain string order: any sort gives this.
        return sorted(sums)
    items = [(s, c, i) for i, (s, c) in enumerate(zip(sums, cleaned, strict=True))]
    _legacy_sort(items)
    return [item[0] for item in items]


def _go_clean(p: bytes) -> bytes:
    """Go ``path.Clean`` on bytes (``posixpath.normpath`` differs: it keeps ``//``)."""
    if not p:
        return b"."
    rooted = p[:1] == b"/"
    stack: list[bytes] = []
    for part in p.split(b"/"):
        if not part or part == b".":
            continue
        if part == b"..":
            if stack and stack[-1] != b"..":
                stack.pop()
            elif not rooted:
                stack.append(part)
            continue
        stack.append(part)
    body = b"/".join(stack)
    if rooted:
        return b"/" + body
    return body or b"."


def _is_clean(p: bytes) -> bool:
    # Cheap test that path.Clean would return p unchanged (false negatives are fine).
    return (
        p not in (b"", b".", b"..")
        and b"//" not in p
        and b"./" not in p
        and not p.endswith((b"/", b"/.", b"/.."))
    )


def _legacy_sort(items: list[tuple[str, bytes, int]]) -> None:
    """In-place port of Go <= 1.5 ``sort.Sort`` with TarSum's duplicate-aware ``Less``.

    ``items`` are ``(hex sum, cleaned name, position)``. Entries with the same name
    compare by position, all others by sum. That relation is not a strict weak
    order, so the exact algorithm (quicksort, ninther, insertion-sort cutoff 7,
    heapsort at the depth limit) decides the result and is reproduced step by step.
    """

    def less(i: int, j: int) -> bool:
        a, b = items[i], items[j]
        if a[1] == b[1]:
            return a[2] < b[2]
        return a[0] < b[0]

    def swap(i: int, j: int) -> None:
        items[i], items[j] = items[j], items[i]

    def insertion_sort(a: int, b: int) -> None:
        for i in range(a + 1, b):
            j = i
            while j > a and less(j, j - 1):
                swap(j, j - 1)
                j -= 1

    def sift_down(lo: int, hi: int, first: int) -> None:
        root = lo
        while True:
            child = 2 * root + 1
            if child >= hi:
                return
            if child + 1 < hi and less(first + child, first + child + 1):
                child += 1
            if not less(first + root, first + child):
                return
            swap(first + root, first + child)
            root = child

    def heap_sort(a: int, b: int) -> None:
        first, hi = a, b - a
        for i in range((hi - 1) // 2, -1, -1):
            sift_down(i, hi, first)
        for i in range(hi - 1, -1, -1):
            swap(first, first + i)
            sift_down(0, i, first)

    def median_of_three(m1: int, m0: int, m2: int) -> None:
        # Leaves the median of the three in m1.
        if less(m1, m0):
            swap(m1, m0)
        if less(m2, m1):
            swap(m2, m1)
            if less(m1, m0):
                swap(m1, m0)

    def swap_range(a: int, b: int, n: int) -> None:
        for i in range(n):
            swap(a + i, b + i)

    def do_pivot(lo: int, hi: int) -> tuple[int, int]:
        m = lo + (hi - lo) // 2
        if hi - lo > 40:
            s = (hi - lo) // 8
            median_of_three(lo, lo + s, lo + 2 * s)
            median_of_three(m, m - s, m + s)
            median_of_three(hi - 1, hi - 1 - s, hi - 1 - 2 * s)
        median_of_three(lo, m, hi - 1)
        pivot = lo
        a, b, c, d = lo + 1, lo + 1, hi, hi
        while True:
            while b < c:
                if less(b, pivot):
                    b += 1
                elif not less(pivot, b):
                    swap(a, b)
                    a += 1
                    b += 1
                else:
                    break
            while b < c:
                if less(pivot, c - 1):
                    c -= 1
                elif not less(c - 1, pivot):
                    swap(c - 1, d - 1)
                    c -= 1
                    d -= 1
                else:
                    break
            if b >= c:
                break
            swap(b, c - 1)
            b += 1
            c -= 1
        n = min(b - a, a - lo)
        swap_range(lo, b - n, n)
        n = min(hi - d, d - c)
        swap_range(c, hi - n, n)
        return lo + b - a, hi - (d - c)

    def quick_sort(a: int, b: int, max_depth: int) -> None:
        while b - a > 7:
            if max_depth == 0:
                heap_sort(a, b)
                return
            max_depth -= 1
            mlo, mhi = do_pivot(a, b)
            if mlo - a < b - mhi:
                quick_sort(a, mlo, max_depth)
                a = mhi
            else:
                quick_sort(mhi, b, max_depth)
                b = mlo
        if b - a > 1:
            insertion_sort(a, b)

    n = len(items)
    quick_sort(0, n, 2 * n.bit_length())
