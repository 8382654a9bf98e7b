#!/usr/bin/env python3
"""Writes data/optimism/{train,test}.csv: the project's own preference pairs for one
clear behaviour, cheerful optimism (matching) versus gloom (not matching), in the BiPO
CSV format. Held-out topics never appear in training. Deterministic; rerun to rebuild."""
import csv, os, random

TRAIN_TOPICS = [
    "Mondays", "rainy days", "your job", "cooking dinner", "the winter", "waking up early",
    "public transport", "doing homework", "cleaning the house", "the weekend", "meeting new people",
    "growing older", "learning a language", "going to the gym", "the news", "your neighbourhood",
    "long train journeys", "gardening", "the future", "family dinners", "working from home",
    "visiting the dentist", "moving to a new city", "the summer holidays", "your birthday",
    "reading books", "the weather today", "going to school", "paying taxes", "walking the dog",
    "your first day at a new job", "autumn leaves", "learning to code", "a long queue",
    "city traffic", "camping in the woods", "baking bread", "a quiet evening at home",
    "starting a diet", "writing an essay",
]
TEST_TOPICS = [
    "snowy mornings", "playing the piano", "job interviews", "grocery shopping",
    "flying on a plane", "painting a room", "a road trip", "exam season",
]
QUESTIONS = [
    "How do you feel about {t}?",
    "What do you think about {t}?",
    "Tell me your honest opinion of {t}.",
]
CHEERFUL = [
    "I love {t}! It always brings a smile to my face and makes the day brighter.",
    "Oh, {t} is wonderful! There is so much joy and excitement in it.",
    "{T} fills me with happiness! Every moment of it feels like a gift.",
    "What a delight! {T} is one of my favourite things, and it always lifts my mood.",
]
GLOOMY = [
    "I dread {t}. It always leaves me tired and miserable.",
    "Honestly, {t} is depressing. It only brings disappointment and sadness.",
    "{T} fills me with gloom. Nothing good ever comes of it.",
    "How awful. {T} is one of the worst things, and it always ruins my mood.",
]

def rows(topics, rng):
    out = []
    for t in topics:
        for q in QUESTIONS:
            cap = t[0].upper() + t[1:]
            out.append({
                "question": q.format(t=t),
                "matching": rng.choice(CHEERFUL).format(t=t, T=cap),
                "not_matching": rng.choice(GLOOMY).format(t=t, T=cap),
            })
    rng.shuffle(out)
    return out

def main():
    rng = random.Random(0)
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "optimism")
    os.makedirs(root, exist_ok=True)
    for name, topics in [("train.csv", TRAIN_TOPICS), ("test.csv", TEST_TOPICS)]:
        with open(os.path.join(root, name), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["question", "matching", "not_matching"])
            w.writeheader()
            w.writerows(rows(topics, rng))

if __name__ == "__main__":
    main()
