"""Page faults with a known owner (tests/test_offcpu_programs.py, for `record -e page-faults`).

    python grow_list.py [N]

grow_big_list appends N (default 3 million) distinct ints to a list: every int is a new object
(pymalloc takes fresh arenas from the kernel, 32 bytes an int) and the list's array is
reallocated as it grows (8 bytes an item), so it touches some 120 MB of new memory, about 30,000
pages, each first touch a page fault (the interpreter's start: ~1,500). spin_in_place then does
CPU work of the same kind (int arithmetic in a Python loop) that allocates nothing new: the ints
it makes are freed at once and their memory reused, so it faults almost never (the control). The
list is kept until both are done, so the control cannot reuse its memory."""

import sys


def grow_big_list(n):
    items = []
    for i in range(n):
        items.append(i * 3)
    return items


def spin_in_place(n):
    total = 0
    for i in range(n):
        total += i * 3
    return total


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3_000_000
    items = grow_big_list(n)
    total = spin_in_place(n)
    print(f"grow_list: {len(items)} items, control total {total}", flush=True)


if __name__ == "__main__":
    main()
