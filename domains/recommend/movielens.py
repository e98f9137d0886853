"""MovieLens (ml-latest-small; ``ratings.csv`` and ``movies.csv``): the one reader.

Adapter training (``finetune/data/recommend.py``) and the ranking evaluation
(``finetune/evals/recommend.py``) both read the ratings here, so both see each user's ratings in the
same order and "a user's last ``HELD_OUT`` ratings" names the same ratings in both: the evaluation
holds them out (validation, then test), training never makes them a target nor puts them in a
history window.

Order: by timestamp, then by movie id. Many ratings share a second (a user rating a batch of films
at once); a tie-break that depends on titles or on the file's row order would move the held-out
ratings with them.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from core.errors import InvalidRequestError
from domains.recommend.records import Event, Item

HELD_OUT = 2  # each user's last ratings: the ranking evaluation's validation and test items
NO_GENRE = "(no genres listed)"
T = TypeVar("T")


@dataclass(frozen=True)
class Movie:
    id: str
    title: str
    genres: tuple[str, ...]


@dataclass(frozen=True)
class Rating:
    movie: str
    rating: float
    ts: int


@dataclass
class MovieLens:
    movies: dict[str, Movie]
    ratings: dict[str, list[Rating]]  # user id -> that user's ratings of known movies, in order

    def users(self) -> list[str]:
        """User ids in numeric order."""
        return sorted(self.ratings, key=_id_key)

    def items(self) -> dict[str, Item]:
        """Movies as catalogue items: the first genre as category, all genres as tags."""
        return {
            m.id: Item(m.id, m.title, category=m.genres[0] if m.genres else "", tags=m.genres)
            for m in self.movies.values()
        }

    def events(self) -> dict[str, list[Event]]:
        """user -> rating events, in order."""
        return {
            user: [Event(user, r.movie, "rating", float(r.ts), r.rating) for r in ratings]
            for user, ratings in self.ratings.items()
        }

    def title_ratings(self) -> dict[int, list[tuple[int, str, float]]]:
        """user -> [(timestamp, title, rating)], in order: the rows the adapter's training windows use."""
        return {
            int(user): [(r.ts, self.movies[r.movie].title, r.rating) for r in ratings]
            for user, ratings in self.ratings.items()
        }


def _id_key(value: str) -> tuple[int, str]:
    """Numeric ids in numeric order (MovieLens ids are integers), any other after them by text."""
    return (int(value), "") if value.isdigit() else (1 << 62, value)


def _need(path: Path) -> Path:
    if not path.is_file():
        raise InvalidRequestError(
            f"{path} is missing: MovieLens ml-latest-small is read from "
            "DOMAINLLM_SHARED_DATA_DIR/recsys/ml-latest-small (not shipped with the project)"
        )
    return path


def read_movielens(ratings_path: Path, movies_path: Path) -> MovieLens:
    """Movies and each user's ratings of them, by (timestamp, movie id); ratings of movies missing
    from ``movies.csv`` are dropped."""
    movies: dict[str, Movie] = {}
    with _need(movies_path).open(encoding="utf-8", newline="") as fh:
        for r in csv.DictReader(fh):
            genres = tuple(g for g in r["genres"].split("|") if g and g != NO_GENRE)
            movies[r["movieId"]] = Movie(r["movieId"], r["title"].strip(), genres)
    ratings: dict[str, list[Rating]] = {}
    with _need(ratings_path).open(encoding="utf-8", newline="") as fh:
        for r in csv.DictReader(fh):
            if r["movieId"] in movies:
                rating = Rating(r["movieId"], float(r["rating"]), int(float(r["timestamp"])))
                ratings.setdefault(r["userId"], []).append(rating)
    for rows in ratings.values():
        rows.sort(key=lambda r: (r.ts, _id_key(r.movie)))
    return MovieLens(movies, ratings)


def without_held_out(rows: Sequence[T], held_out: int = HELD_OUT) -> list[T]:
    """A user's rows (in order) less the last ``held_out``: what training may use."""
    return list(rows[: len(rows) - held_out]) if held_out > 0 else list(rows)
