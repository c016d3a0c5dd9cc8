"""Built-in traffic of ``driftloop demo --model smollm2``: written for the demo, no external data set.

Two workloads of one small model (SmolLM2-135M-Instruct):

* ``general``: short general-knowledge questions the base model mostly answers (the simulated user is
  happy when the answer contains one of the expected words);
* ``support``: questions about a fictional product, "Acme Cloud", that only a big model wired to the
  product's documentation answers right: the *teacher*, whose answers the app logs (shadow traffic).
  The user is happy when the answer contains the intent's key fact (a console path, a command, a form
  name; nothing that PII redaction would rewrite), which the base model cannot guess and the distilled student learns from the teacher.

Phrasings are several per intent, so held-out prompts are new texts of known intents: what production
support traffic looks like.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class DemoPrompt:
    """One question of the demo: its workload, text, what makes a user happy, and the teacher's answer."""

    workload: str
    text: str
    expected: tuple[str, ...]  # happy when the answer contains any of these (case and spacing ignored)
    teacher: str | None = None  # the teacher's answer (support only)

    def happy(self, answer: str) -> bool:
        norm = _norm(answer)
        return any(_norm(e) in norm for e in self.expected)


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s.replace("`", "")).strip().lower()


GENERAL: list[tuple[str, tuple[str, ...]]] = [
    ("What is the capital of France?", ("paris",)),
    ("What is the capital of Japan?", ("tokyo",)),
    ("What is the capital of Italy?", ("rome",)),
    ("What is the capital of Germany?", ("berlin",)),
    ("What is the capital of Spain?", ("madrid",)),
    ("What is the boiling point of water in Celsius?", ("100",)),
    ("What is the freezing point of water in Celsius?", ("0 degrees", "zero", "0°", "0 °")),
    ("Who wrote Romeo and Juliet?", ("shakespeare",)),
    ("Who painted the Mona Lisa?", ("leonardo", "da vinci")),
    ("What gas do humans need to breathe to live?", ("oxygen",)),
    ("What is the chemical symbol for water?", ("h2o", "h₂o")),
    ("What is the largest ocean on Earth?", ("pacific",)),
    ("How many days are in a week?", ("seven", "7")),
    ("How many minutes are in an hour?", ("60", "sixty")),
    ("What color is the sky on a clear day?", ("blue",)),
    ("What is the opposite of hot?", ("cold",)),
    ("Which planet do we live on?", ("earth",)),
    ("What do bees make?", ("honey",)),
    ("What is the main language spoken in Brazil?", ("portuguese",)),
    ("What is the main language spoken in Mexico?", ("spanish",)),
    ("What is 2 plus 2?", ("4", "four")),
    ("What is 10 times 10?", ("100", "hundred")),
    ("Which animal is known as the king of the jungle?", ("lion",)),
    ("What is the largest mammal in the world?", ("whale",)),
    ("What is the tallest mountain in the world?", ("everest",)),
    ("What is the closest star to the Earth?", ("sun",)),
    ("What do we call frozen water?", ("ice",)),
    ("What is the currency of the United States?", ("dollar",)),
    ("Which season comes after winter?", ("spring",)),
    ("What organ pumps blood through the body?", ("heart",)),
    ("What is the capital of the United Kingdom?", ("london",)),
    ("How many continents are there on Earth?", ("seven", "7")),
]  # fmt: skip

# intent -> (the teacher's answer, its key fact, phrasings)
SUPPORT: dict[str, tuple[str, str, list[str]]] = {
    "password": (
        "Open Console > Account > Credentials and choose Reset password; the reset link is valid for 30 minutes.",
        "credentials",
        ["How do I reset my Acme Cloud password?", "I forgot my password for Acme Cloud, what now?",
         "Where can I change my Acme Cloud password?", "My Acme Cloud login password stopped working. How do I reset it?",
         "How can I set a new password on my Acme Cloud account?", "Locked out of Acme Cloud, how do I reset the password?"],
    ),
    "cli-login": (
        "Run acmectl login --sso and pick your organisation in the browser window that opens.",
        "acmectl login",
        ["How do I log in to Acme Cloud from the command line?", "What is the CLI command to sign in to Acme Cloud?",
         "How can my terminal authenticate to Acme Cloud?", "How do I use single sign-on with the Acme Cloud CLI?",
         "The Acme Cloud CLI says I am not logged in. What do I run?", "How do I connect the Acme Cloud CLI to my account?"],
    ),
    "refund": (
        "Refunds are possible within 14 days of a charge: file form RF-14 under Console > Billing with the invoice number.",
        "rf-14",
        ["Can I get a refund from Acme Cloud?", "How do I ask Acme Cloud for my money back?",
         "I was charged twice by Acme Cloud, how do I get a refund?", "What is the Acme Cloud refund process?",
         "Who do I contact at Acme Cloud about a wrong charge?", "Acme Cloud billed me by mistake. How do I get it refunded?"],
    ),
    "quota": (
        "Quotas are raised from Console > Limits > Request increase; most requests are approved within 2 business days.",
        "request increase",
        ["How do I raise my Acme Cloud quota?", "I hit the VM limit on Acme Cloud. How do I get more?",
         "How can I increase my storage quota on Acme Cloud?", "Where do I ask for higher limits in Acme Cloud?",
         "Acme Cloud says quota exceeded. What should I do?", "How do I request more CPUs on Acme Cloud?"],
    ),
    "close-account": (
        "Close it under Console > Account > Close account; your data is kept for 7 days in case you change your mind.",
        "close account",
        ["How do I delete my Acme Cloud account?", "I want to cancel my Acme Cloud account. How?",
         "How can I close my account on Acme Cloud?", "Where do I remove my Acme Cloud account for good?",
         "How do I shut down my Acme Cloud account?", "What are the steps to delete an Acme Cloud account?"],
    ),
    "status": (
        "Live service status is at status.acme.example, where you can also subscribe to incident emails.",
        "status.acme.example",
        ["Is Acme Cloud down right now?", "Where can I see if Acme Cloud has an outage?",
         "How do I check the Acme Cloud service status?", "Acme Cloud seems slow today. Is there an incident?",
         "Where are Acme Cloud outages announced?", "How do I get notified about Acme Cloud incidents?"],
    ),
    "api-keys": (
        "Create a new key with acmectl keys create, deploy it, then revoke the old one with acmectl keys revoke.",
        "acmectl keys",
        ["How do I rotate my Acme Cloud API key?", "How can I create a new API key for Acme Cloud?",
         "My Acme Cloud API key leaked. What do I do?", "How do I revoke an Acme Cloud API key?",
         "How do I replace an old Acme Cloud API key?", "What is the safe way to change API keys on Acme Cloud?"],
    ),
    "phone": (
        "Chat support is open 24/7 from the Help button in the Console; call-back support is for Enterprise plans.",
        "help button",
        ["Can I call Acme Cloud support?", "What is the Acme Cloud support phone number?",
         "How do I talk to a person at Acme Cloud?", "When is Acme Cloud support available?",
         "Does Acme Cloud have phone support?", "How do I reach Acme Cloud support quickly?"],
    ),
}  # fmt: skip


def general_prompts() -> list[DemoPrompt]:
    return [DemoPrompt("general", q, exp) for q, exp in GENERAL]


def support_prompts() -> list[DemoPrompt]:
    return [
        DemoPrompt("support", p, (fact,), answer) for answer, fact, phrasings in SUPPORT.values() for p in phrasings
    ]
