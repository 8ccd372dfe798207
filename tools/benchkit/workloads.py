"""What the clients ask: one free-writing workload and three that copy their input.

Free writing (a story about a topic) is where speculation has nothing to copy; editing
code, fixing typos and extracting fields repeat long spans of the prompt in the answer,
which is where prompt-lookup drafting pays. Each workload has four variants; a copying
request also starts with its own serial number, so no two requests of a run share more
than the chat template's system prompt (prefix caches, InferFlux's and llama-server's,
would otherwise turn repeats into a different benchmark). Copying workloads end where the
model ends (no ignore_eos): all servers decode greedily, so they write (nearly) the same
text, and tok/s compares.
"""

from __future__ import annotations

from dataclasses import dataclass

TOPICS = [
    "a lighthouse keeper",
    "a lost robot",
    "a dragon who bakes",
    "two rival chefs",
    "a time-travelling cat",
    "a city under the sea",
    "a haunted violin",
    "a desert train",
    "an honest politician",
    "a forgotten moon",
    "a library that moves",
    "a tiny giant",
    "a stubborn glacier",
    "a painter of clocks",
    "a whale who sings opera",
    "a paper fox",
]

CODE = [
    '''def moving_average(values, window):
    """Average of each run of `window` consecutive values."""
    if window <= 0:
        raise ValueError("window must be positive")
    averages = []
    total = 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        if index >= window - 1:
            averages.append(total / window)
    return averages


def normalise(values):
    """Scale values into the range 0..1."""
    low = min(values)
    high = max(values)
    if high == low:
        return [0.0 for _ in values]
    return [(value - low) / (high - low) for value in values]
''',
    """class Inventory:
    def __init__(self):
        self.items = {}

    def add(self, name, quantity):
        if quantity <= 0:
            raise ValueError("quantity must be positive")
        self.items[name] = self.items.get(name, 0) + quantity

    def remove(self, name, quantity):
        have = self.items.get(name, 0)
        if quantity > have:
            raise ValueError(f"only {have} of {name} left")
        self.items[name] = have - quantity
        if self.items[name] == 0:
            del self.items[name]

    def count(self, name):
        return self.items.get(name, 0)
""",
    '''def parse_config(lines):
    """Read `key = value` lines into a dict, skipping comments and blanks."""
    config = {}
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise ValueError(f"line {number}: expected key = value")
        key, value = line.split("=", 1)
        config[key.strip()] = value.strip()
    return config


def merge_configs(base, override):
    merged = dict(base)
    for key, value in override.items():
        merged[key] = value
    return merged
''',
    '''def binary_search(items, target):
    """Index of target in the sorted list items, or -1."""
    low = 0
    high = len(items) - 1
    while low <= high:
        middle = (low + high) // 2
        if items[middle] == target:
            return middle
        if items[middle] < target:
            low = middle + 1
        else:
            high = middle - 1
    return -1


def insert_sorted(items, value):
    index = 0
    while index < len(items) and items[index] < value:
        index += 1
    items.insert(index, value)
    return items
''',
]
CODE_TASKS = [
    "Add type hints to every function in this Python code. Reply with the complete code.",
    "Rename the variable `items` to `entries` in this Python code. Reply with the complete code.",
    "Add a comment above each function in this Python code. Reply with the complete code.",
    "Make every error message in this Python code end with a period. Reply with the complete code.",
]

TYPOS = [
    "The comittee met on Tuesday to dicsuss the new budjet. After a long debate, the members "
    "agred that the libary should recieve more funding next year, becuase the number of "
    "visiters has doubled since the renovation. The chairman thanked everyone for there "
    "patience and promissed to publish the minutes by Friday.",
    "Our trip to the mountians was unforgetable. We left early in the morning, drove for "
    "three ours and reached the vilage just before lunch. The wheather was perfect, the air "
    "was fresh, and the veiw from the top of the hill was breathtakeing. In the evening we "
    "ate dinner at a small restaraunt near the lake.",
    "To instal the software, first downlaod the archive from the offical website. Then "
    "extract it into a new folder and run the setup programm. If the instalation fails, "
    "check that your computer has enough free space and that you have administator rights. "
    "Restart the computer when the procces is complete.",
    "The resarch team published there findings in a respected jounral last month. They "
    "discoverd that the plants grew faster when they recieved light at night, wich "
    "suprised many scientists. The next experiment will test wether the same efect appears "
    "in colder climates.",
]

RECORDS = [
    "Hello, this is Maria Gonzalez (maria.gonzalez@example.com). I placed order 48213 on "
    "March 3rd for two blue ceramic mugs and one teapot, total 54.90 EUR, to be shipped to "
    "12 Harbour Street, Lisbon, Portugal. The teapot arrived broken.",
    "Hi, my name is Tom Becker, email tom.becker@example.org. Order number 77120 from June "
    "14th: one pair of hiking boots and three pairs of wool socks, total 189.50 USD, "
    "shipping address 450 Pine Avenue, Denver, Colorado. The boots are too small.",
    "Dear support, I am Aiko Tanaka (aiko.tanaka@example.net). On October 2nd I ordered a "
    "desk lamp and a pack of light bulbs, order 30958, total 42.00 USD, delivered to 8 Maple "
    "Road, Portland, Oregon. The lamp does not switch on.",
    "Good morning, Peter Novak here, peter.novak@example.com. My order 65402, placed on "
    "January 21st, contained a laptop stand and a wireless keyboard, total 97.30 EUR, "
    "address 3 Castle Lane, Prague, Czech Republic. The keyboard is missing.",
]
JSON_TASK = (
    "Extract these fields from the message as JSON: name, email, order_id, date, items "
    "(a list), total, address, problem. Reply with the JSON only.\n\n"
)


# A 716-token prompt with the chat template (the TTFT comparison): 23 policies.
POLICIES = " ".join(
    f"Policy {i}: when a customer asks about product line {i}, answer with its warranty "
    "terms, its return window and its safety notes."
    for i in range(23)
)


@dataclass(frozen=True)
class Workload:
    name: str
    what: str
    max_tokens: int  # 0: --max-tokens
    ignore_eos: bool

    def messages(self, n: int, serial: int = 0) -> list[dict]:
        """The n-th request of this workload (clients and rounds take turns); `serial`
        numbers the requests of a whole run."""
        match self.name:
            case "free":
                content = f"Write a long, detailed story about {TOPICS[n % len(TOPICS)]}."
            case "code":
                content = f"{CODE_TASKS[n % 4]}\n\n```python\n{CODE[(n // 4 + n) % 4]}```"
            case "typos":
                content = (
                    "Fix the spelling mistakes in this paragraph. Reply with the corrected "
                    f"paragraph only.\n\n{TYPOS[n % len(TYPOS)]}"
                )
            case "json":
                content = JSON_TASK + RECORDS[n % len(RECORDS)]
            case "long":
                content = f"Summarize these policies in one sentence.\n\n{POLICIES}"
            case _:
                raise ValueError(self.name)
        if self.name != "free":  # free writing stays as it was measured before (docs/)
            content = f"Request {serial}. {content}"
        return [{"role": "user", "content": content}]


WORKLOADS = {
    w.name: w
    for w in (
        Workload("free", "free writing: a story about a topic (ignore_eos)", 0, True),
        Workload("code", "edit this code: the whole code back, changed", 400, False),
        Workload("typos", "fix the typos in this paragraph", 200, False),
        Workload("json", "extract these fields as JSON from a message", 160, False),
        Workload("long", "a 716-token prompt, 8 tokens out: time to first token", 8, True),
    )
}
