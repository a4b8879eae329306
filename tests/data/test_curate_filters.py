"""Model-free curation filters: format, reference answers, dedup, tagging, balancing."""

import json

import pytest

from openk1.config import build
from openk1.curate.balance import balance_counts, balance_mask
from openk1.curate.dedup import (
    MinHasher,
    NearDupIndex,
    jaccard,
    normalize_text,
    normalize_tokens,
    shingles,
)
from openk1.curate.format import detect_format, unusable_answer
from openk1.curate.tagging import keyword_tags
from openk1.stages.curate import CurateConfig, curate

# (prompt, reference answer, expected kind): the layouts real datasets use
DROPPED = [
    ("What is 2+3?\nA. 4\nB. 5\nC. 6\nD. 7", "B", "multiple_choice"),
    ("Which of the following is a prime number? (A) 21 (B) 27 (C) 29 (D) 33", "C", "multiple_choice"),
    ("If $x+2=5$, then $x=$ ( )\nA: $1$\nB: $2$\nC: $3$\nD: $4$", "C", "multiple_choice"),
    (("What is the value of $1+2+\\cdots+10$?\n$\\textbf{(A) }45\\qquad\\textbf{(B) }50\\qquad"
     "\\textbf{(C) }55\\qquad\\textbf{(D) }60\\qquad\\textbf{(E) }65$"), "\\textbf{(C) }55", "multiple_choice"),
    ("A train travels 120 km in 2 hours. Its average speed is: a) 50 km/h b) 60 km/h c) 70 km/h",
     "60 km/h", "multiple_choice"),
    ("How many positive divisors does 36 have?\n1) 6\n2) 8\n3) 9\n4) 12", "9", "multiple_choice"),
    ("A shop sells pens at $3 each. How much do 3 pens cost? Answer Choices: (A) $6 (B) $9 (C) $12",
     "(B)", "multiple_choice"),
    ("Options: A. 12 B. 15 C. 18 D. 20\nWhat is 3 times 5?", "B", "multiple_choice"),
    ("The sum of the interior angles of a hexagon is  A. 540°  B. 720°  C. 900°  D. 1080°", "720",
     "multiple_choice"),
    ("Select the correct answer. The derivative of x^2 is\n(a) x\n(b) 2x\n(c) x^2/2", "2x", "multiple_choice"),
    (("Given the statements: ① 2 is prime; ② 9 is prime; ③ 1 is prime. Which of the following "
     "statements are correct?"), "①", "multiple_choice"),
    ("True or false: every continuous function is differentiable.", "False", "true_false"),
    ("Is 91 a prime number? Answer yes or no.", "no", "true_false"),
    ("State whether the following statement is true or false: sqrt(2) is rational.", "false", "true_false"),
    ("The equation x^2+1=0 has a real root. (T/F)", "F", "true_false"),
    ("Is 221 prime?", "No", "true_false"),
    ("Determine whether the series $\\sum 1/n^2$ converges or diverges.", "converges", "true_false"),
    ("Is it true that every even number greater than 2 is the sum of two primes?", "Yes", "true_false"),
    ("Prove that there are infinitely many primes.", "See proof.", "proof"),
    ("Show that for every integer n, n^3 - n is divisible by 6.", "6", "proof"),
    ("Prove or disprove: the product of two irrational numbers is irrational.", "false", "proof"),
    ("Let $a,b>0$. Demonstrate that $a/b + b/a \\ge 2$.", "2", "proof"),
    ("Give a combinatorial proof of the identity $\\sum_k \\binom{n}{k} = 2^n$.", "2^n", "proof"),
    ("(1) Find the general term of the sequence; (2) Prove that $S_n < 2$.", "a_n=2^{-n}", "proof"),
    ("Explain why the sum of two odd numbers is always even.", "even", "proof"),
]

# ordinary questions that share words or layout with the ones above
KEPT = [
    ("Show your work and compute 17 * 23.", "391"),
    ("Which integer n satisfies 3n + 5 = 20?", "5"),
    ("Determine the value of k such that the line y = kx + 2 is tangent to the parabola y = x^2.",
     "\\pm 2\\sqrt{2}"),
    ("Events A and B are independent with P(A) = 0.3 and P(B) = 0.5. Compute P(A \\cup B).", "0.65"),
    ("Solve the system of equations: (1) x + y + z = 6 (2) x - y = 1 (3) 2x + z = 7", "(2,1,3)"),
    ("(1) Find the general term $a_n$; (2) Find the sum of the first 10 terms.", "1023"),
    ("a) Find x if 2x = 6. b) Find y if y - x = 4.", "7"),
    (("Points A, B and C lie on a circle of radius 5 with AB = 6. Find the largest possible area "
     "of triangle ABC."), "27"),
    ("Compute f(1) + f(2) + f(3) where f(x) = x^2.", "14"),
    ("Which of these three numbers is largest: 2^30, 3^20, 5^13? Give the number.", "3^{20}"),
    ("Is there a positive integer n with n^2 + n + 41 composite? Find the smallest such n.", "40"),
    ("The improper integral $\\int_1^\\infty x^{-2} dx$ equals what value?", "1"),
    ("Shown below is the graph of y = ax + b through (0, 1) and (2, 5). Find a + b.", "3"),
    ("How many ways can you choose 3 books from 10?", "120"),
    (("A and B start from the same point. A walks at 3 km/h, B at 5 km/h. How far apart are they "
     "after 2 hours if they walk in opposite directions?"), "16"),
    ("Let S be the set of all 3-digit numbers. Determine how many are divisible by 7.", "128"),
    ("Find the remainder when 2^100 is divided by 7. Justify your answer.", "2"),
    (("Knights always tell the truth. A says: B is a knave. B says: we are both knights. "
     "How many knights are there?"), "1"),
    ("12+34=", "46"),
]


@pytest.mark.parametrize("prompt, answer, kind", DROPPED, ids=[p[:40] for p, _, _ in DROPPED])
def test_format_filter_drops_choice_true_false_and_proof(prompt, answer, kind):
    hit = detect_format(prompt, answer)
    assert hit is not None and hit.kind == kind


@pytest.mark.parametrize("prompt, answer", KEPT, ids=[p[:40] for p, _ in KEPT])
def test_format_filter_keeps_look_alikes(prompt, answer):
    assert detect_format(prompt, answer) is None


def test_format_evidence_names_what_decided():
    assert detect_format("Which of the following is a prime number? (A) 21 (B) 27").evidence == "(A) 21 (B)"
    assert detect_format("Prove or disprove: 2^n > n^2.").evidence == "Prove"
    assert detect_format("Is 221 prime?", "No").evidence == "answer 'No'"
    assert detect_format("Is 221 prime? Give its smallest factor.", "13") is None


@pytest.mark.parametrize("row, detail", [
    ({"prompt": "1+1=", "answer": "2"}, None),
    ({"prompt": "1+1=", "answer": 2}, None),
    ({"prompt": "1+1="}, "missing answer"),
    ({"prompt": "1+1=", "answer": "  "}, "empty answer"),
    ({"prompt": "Prove it.", "answer": "See proof."}, "placeholder answer 'See proof.'"),
    ({"prompt": "Prove it.", "answer": "N/A"}, "placeholder answer 'N/A'"),
    ({"prompt": "x", "answer": ["1", "2"]}, "answer is a list, not a string or number"),
    ({"prompt": "x", "answer": "a" * 301}, "answer longer than 300 characters"),
    ({"prompt": "Sort it.", "type": "code", "tests": [{"input": "1", "output": "1"}]}, None),
    ({"prompt": "Sort it.", "type": "code", "tests": []}, "code row without tests"),
])
def test_rows_without_a_usable_reference(row, detail):
    got = unusable_answer(row, max_chars=300)
    assert got == detail if detail is None else got.startswith(detail)


# --- dedup ------------------------------------------------------------------------------------

BAG = ("A bag contains 5 red balls and 3 blue balls. Two balls are drawn at random without "
       "replacement. What is the probability that both balls are red?")
BAG_REWORDED = BAG.replace("both balls are red", "both of the balls are red")
BAG_SIX = BAG.replace("5 red", "6 red")
MARBLES = ("A box holds 5 red marbles and 3 green ones. Three marbles are chosen. What is the "
           "probability that exactly two are red?")


def test_normalisation_is_the_exact_duplicate_key():
    assert normalize_tokens("Compute $2^{10} + 3.5$.") == ["compute", "2", "^", "10", "+", "3.5"]
    assert normalize_text("Find the remainder when $2^{100}$ is divided by 7.") == \
        normalize_text("find the  remainder when 2^100 is divided by 7")
    assert normalize_text("12 + 34 =") == normalize_text("12+34=")
    assert normalize_text("12+34=") != normalize_text("12-34=")
    assert normalize_text("\\left(\\dfrac{1}{2}\\right)") == normalize_text("(\\frac{1}{2})")


def test_shingle_jaccard_by_hand():
    # BAG has 27 tokens -> 25 trigrams. Inserting "of the" removes the 2 trigrams that span
    # "both|balls" and adds 4 new ones: J = 23 / (25 + 4) = 23/29.
    a, b = shingles(normalize_tokens(BAG), 3), shingles(normalize_tokens(BAG_REWORDED), 3)
    assert (len(a), len(b)) == (25, 27)
    assert jaccard(a, b) == pytest.approx(23 / 29)
    # changing token 4 ("5" -> "6") replaces the 3 trigrams holding it: J = 22 / 28
    assert jaccard(a, shingles(normalize_tokens(BAG_SIX), 3)) == pytest.approx(22 / 28)
    assert shingles(["12", "+", "34"], 3) == {"12 + 34"}     # a short text is one shingle


def test_minhash_is_seeded_and_estimates_jaccard():
    a, b = shingles(normalize_tokens(BAG), 3), shingles(normalize_tokens(BAG_REWORDED), 3)
    h0, h0_again, h1 = MinHasher(128, seed=0), MinHasher(128, seed=0), MinHasher(128, seed=1)
    assert (h0.signature(a) == h0_again.signature(a)).all()
    assert not (h0.signature(a) == h1.signature(a)).all()
    estimate = float((h0.signature(a) == h0.signature(b)).mean())
    assert estimate == pytest.approx(23 / 29, abs=0.1)


def test_near_duplicate_index_rules():
    index = NearDupIndex(threshold=0.7, seed=0)
    index.add("bag", BAG)
    assert index.query(BAG_REWORDED) == ("bag", pytest.approx(23 / 29))
    assert index.query(BAG_SIX) is None                       # same words, other numbers
    assert index.query(MARBLES) is None                       # J = 0.07
    loose = NearDupIndex(threshold=0.7, seed=0, same_numbers=False)
    loose.add("bag", BAG)
    assert loose.query(BAG_SIX) == ("bag", pytest.approx(22 / 28))
    strict = NearDupIndex(threshold=0.8, seed=0)
    strict.add("bag", BAG)
    assert strict.query(BAG_REWORDED) is None                 # 0.79 < 0.8


def cfg(**values):
    return build(CurateConfig, {"progress": False, **values})


def test_curate_dedup_and_decontamination(tmp_path):
    eval_path = tmp_path / "eval.jsonl"
    eval_path.write_text(json.dumps({"prompt": "What is 17 * 23?", "answer": "391"}) + "\n" +
                         json.dumps({"prompt": MARBLES, "answer": "15/28"}) + "\n")
    rows = [
        {"id": "bag", "prompt": BAG, "answer": "5/14"},
        {"id": "bag-copy", "prompt": "  a bag contains 5 red balls and 3 blue balls. two balls are "
                                     "drawn at random without replacement. what is the probability "
                                     "that both balls are red", "answer": "5/14"},
        {"id": "bag-reworded", "prompt": BAG_REWORDED, "answer": "5/14"},
        {"id": "bag-six", "prompt": BAG_SIX, "answer": "5/12"},
        {"id": "leak", "prompt": "what is 17*23 ?", "answer": "391"},
        {"id": "leak-near", "prompt": MARBLES.replace("chosen", "chosen at random"), "answer": "15/28"},
        {"prompt": "12+34=", "answer": "46"},
        {"prompt": "12 + 34 =", "answer": "46"},
    ]
    kept, dropped, summary = curate(rows, cfg(dedup={"decontaminate": [str(eval_path)]}))
    assert [r.get("id", r["prompt"]) for r in kept] == ["bag", "bag-six", "12+34="]
    got = {r.get("id", r["prompt"]): (r["reason"], r.get("duplicate_of")) for r in dropped}
    assert got == {"bag-copy": ("duplicate", "bag"), "bag-reworded": ("near_duplicate", "bag"),
                   "leak": ("contaminated", None), "leak-near": ("contaminated", None),
                   "12 + 34 =": ("duplicate", "row 7")}
    assert dropped[2]["reason_detail"] == f"same prompt as {eval_path}: line 1"
    assert dropped[3]["reason_detail"].startswith(f"near duplicate of {eval_path}: line 2")
    assert {k: v for k, v in summary["removed"].items() if v} == {
        "duplicate": 2, "near_duplicate": 1, "contaminated": 2}
    # with near-duplicate detection off, only the exact copies go
    kept, _, summary = curate(rows, cfg(dedup={"near": False}))
    assert summary["removed"]["duplicate"] == 2 and len(kept) == 6


# --- tagging and balancing --------------------------------------------------------------------

@pytest.mark.parametrize("prompt, kind, expected", [
    ("A car accelerates from rest to a velocity of 20 m/s in 5 s. What is its acceleration?", "math",
     ("physics", ["physics"])),
    ("How many moles of water form when 4 moles of hydrogen react with oxygen?", "math",
     ("chemistry", ["chemistry"])),
    (("A gene has two alleles, A and a. If both parents are Aa, what fraction of offspring have "
     "genotype aa?"), "math", ("biology", ["biology"])),
    ("Write a function that returns the length of the longest increasing subarray of an array.",
     "math", ("code", ["code"])),
    ("Read n and print n squared.", "code", ("code", ["code"])),
    # 2 physics words outweigh 3 general math words (science words count 1.5)
    (("A pendulum of length 2 m swings under gravity. Compute its period and evaluate the ratio of "
     "the period to the length."), "math", ("physics", ["physics"])),
    ("Find the remainder when 2^100 is divided by 7.", "math", ("math", ["number_theory"])),
    ("A triangle has sides 3, 4 and 5. Find its area.", "math", ("math", ["geometry"])),
    ("Find the derivative of x^3 at x = 2.", "math", ("math", ["calculus"])),
    (("In how many ways can 5 people sit around a round table? Find the probability that two given "
     "people sit together."), "math", ("math", ["counting_probability"])),
    ("12+34=", "math", ("math", ["arithmetic"])),
    ("What is 7 * 8 - 5?", "math", ("math", ["arithmetic"])),
    ("Alice is older than Bob, and Carol is younger than Bob. Who is the oldest?", "freeform",
     ("general", ["general"])),
])
def test_keyword_tagger(prompt, kind, expected):
    assert keyword_tags(prompt, kind) == expected


def test_balance_counts_by_hand():
    # N = min(60/0.5, 10/0.25, 30/0.25) = 40 -> 20 math, 10 code, 10 general
    assert balance_counts({"math": 60, "code": 10, "general": 30},
                          {"math": 0.5, "code": 0.25, "general": 0.25}) == {"math": 20, "code": 10, "general": 10}
    # targets are normalised; a domain without a target keeps nothing; an absent one is ignored
    assert balance_counts({"math": 9, "physics": 4, "chess": 5}, {"math": 3, "physics": 1, "code": 2}) == \
        {"math": 9, "physics": 3, "chess": 0}


def test_balance_mask_is_a_seeded_sample_with_exact_counts():
    domains = ["math"] * 12 + ["physics"] * 3 + ["biology"] * 8
    targets = {"math": 0.5, "physics": 0.25, "biology": 0.25}     # N = min(24, 12, 32) = 12
    keep = balance_mask(domains, targets, seed=0)
    counts = {d: sum(k for k, x in zip(keep, domains) if x == d) for d in targets}
    assert counts == {"math": 6, "physics": 3, "biology": 3}
    assert balance_mask(domains, targets, seed=0) == keep
    assert balance_mask(domains, targets, seed=1) != keep


def test_curate_keeps_given_tags_fills_missing_and_balances():
    rows = ([{"prompt": f"Compute {a} times {a + 1}.", "answer": str(a * (a + 1)), "domain": "algebra",
              "tags": ["given"]} for a in range(6)] +
            [{"prompt": f"A ball of mass {m} kg moves at velocity 2 m/s. Find its kinetic energy in joules.",
              "answer": str(2 * m)} for m in range(1, 3)] +
            [{"prompt": f"How many alleles does a gene with {g} copies carry?", "answer": str(g),
              "domain": "biology"} for g in range(1, 5)])
    kept, dropped, summary = curate(rows, cfg(balance={"targets": {"algebra": 2, "physics": 1, "biology": 1}}))
    # algebra 6, physics 2, biology 4 -> N = min(12, 8, 16) = 8 -> 4 / 2 / 2
    assert summary["domain_mix"] == {"before_balance": {"algebra": 6, "biology": 4, "physics": 2},
                                     "kept": {"algebra": 4, "biology": 2, "physics": 2}}
    assert summary["removed"]["balance"] == 4 and len(kept) == 8
    assert summary["tagged_by"] == {"given": 10, "keywords": 2}
    assert all(r["tags"] == ["given"] for r in kept if r["domain"] == "algebra")
    assert [r["tags"] for r in kept if r["domain"] == "physics"] == [["physics"], ["physics"]]
    assert [r["tags"] for r in kept if r["domain"] == "biology"] == [["biology"], ["biology"]]
    assert all(r["reason"] == "balance" for r in dropped)
    prompts = [r["prompt"] for r in rows]
    positions = [prompts.index(r["prompt"]) for r in kept]
    assert positions == sorted(positions)                      # input order preserved
