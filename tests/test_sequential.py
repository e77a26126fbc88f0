"""The sequential decision (bench.sequential): its error rate when one looks after every seed,
against a plain t-interval rechecked at each look; its intervals' coverage wherever a study
stops; what it saves over a fixed design of the same power; the test set's shared part; and its
boundary table against a fresh simulation. Every simulation is vectorised (tens of thousands of
simulated studies in a second or two) and seeded."""
import math

import numpy as np
import pytest
from scipy import stats as st

from bench import sequential as seq
from bench.stats import delta, two_way

K = 10  # looks at 3, 4, …, 10 seeds: the default --max-seeds
STUDIES = 20_000  # simulated studies per check: Monte-Carlo standard error of a 5 % rate ≈ 0.15 %
# paired differences of seeds with the spread of the project's own arms: the quickstart's re-attention
# at 8 epochs (sd of the paired difference about 8 points) and CIFAR-10's (about 1.5 points)
SPREADS = (8.0, 1.5)


def paths(effect, sd, k=K, studies=STUDIES, seed=0, shared=0.0):
    """t-statistics of ``studies`` simulated studies at each look 1…k: Gaussian paired differences
    (mean ``effect``, sd ``sd``), plus one draw per study shared by every seed (a fixed test set's
    share, variance ``shared``), the standard error holding that share as bench estimates it."""
    rng = np.random.default_rng(seed)
    x = rng.normal(effect, sd, (studies, k)) + rng.normal(0.0, math.sqrt(shared), (studies, 1))
    n = np.arange(1, k + 1)
    mean = np.cumsum(x, 1) / n
    var = (np.cumsum(x * x, 1) - n * mean ** 2) / np.maximum(n - 1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean / np.sqrt(var / n + shared)
    return t, mean, np.sqrt(var / n + shared)


def first_decision(t, bound):
    """(decided?, seeds used) per study: stop at the first look n ≥ 3 whose |t| passes bound(n)."""
    decided = np.zeros(len(t), bool)
    used = np.full(len(t), t.shape[1])
    for n in range(seq.FIRST, t.shape[1] + 1):
        hit = ~decided & (np.abs(t[:, n - 1]) > bound(n))
        used[hit] = n
        decided |= hit
    return decided, used


def plain_t(n):
    return st.t.ppf(0.975, n - 1)


def se_of(rate, studies=STUDIES):
    return math.sqrt(rate * (1 - rate) / studies)


@pytest.mark.parametrize("sd", SPREADS)
def test_no_effect_is_decided_at_most_five_percent_of_the_time_looking_after_every_seed(sd):
    t, _, _ = paths(0.0, sd, seed=int(sd * 10))
    sequential = first_decision(t, seq.boundary)[0].mean()
    naive = first_decision(t, plain_t)[0].mean()
    assert sequential <= 0.05 + 3 * se_of(0.05)
    assert naive > 0.12  # the plain t-interval rechecked after each seed: about 17 %


def test_the_guarantee_holds_past_the_horizon_and_when_a_study_is_extended():
    """The boundary of a look does not depend on where the study stops: looking up to 30 seeds
    (a later run raising --max-seeds) keeps the rate at or below 5 %."""
    t, _, _ = paths(0.0, 1.0, k=30, studies=10_000, seed=7)
    assert first_decision(t, seq.boundary)[0].mean() <= 0.05 + 3 * se_of(0.05, 10_000)
    assert first_decision(t, plain_t)[0].mean() > 0.2


def covered(t, mean, se, effect, bound):
    """Whether each study's interval, at the look where it stopped, covers ``effect``."""
    used = first_decision(t, bound)[1]
    rows = np.arange(len(t))
    half = se[rows, used - 1] * np.array([bound(n) for n in used])
    return np.abs(mean[rows, used - 1] - effect) <= half


@pytest.mark.parametrize("effect", [0.0, 1.0, 3.0])
def test_the_repeated_interval_covers_the_truth_wherever_the_study_stops(effect):
    t, mean, se = paths(effect, 5.0, seed=11 + int(effect))
    assert covered(t, mean, se, effect, seq.boundary).mean() >= 0.95 - 3 * se_of(0.05)
    if effect == 0:  # the fixed-n interval at the naive stopping time: the study stopped because it missed
        assert covered(t, mean, se, effect, plain_t).mean() < 0.9


def test_with_an_effect_of_one_seed_sd_it_decides_with_fewer_seeds_than_the_fixed_design_of_its_power():
    t, _, _ = paths(1.0, 1.0, seed=3)
    decided, used = first_decision(t, seq.boundary)
    power, average = decided.mean(), used.mean()

    def fixed_power(n):
        ncp, q = math.sqrt(n), plain_t(n)
        return 1 - st.nct.cdf(q, n - 1, ncp) + st.nct.cdf(-q, n - 1, ncp)
    below = max(n for n in range(3, 40) if fixed_power(n) < power)  # the fixed n of the same power, interpolated
    fixed_n = below + (power - fixed_power(below)) / (fixed_power(below + 1) - fixed_power(below))
    assert 0.65 < power < 0.8 and average < fixed_n - 0.3, (power, average, fixed_n)


@pytest.mark.parametrize("shared", [0.05, 0.3, 1.0, 10.0])
def test_a_test_set_share_only_makes_the_boundary_more_cautious(shared):
    t, _, _ = paths(0.0, 1.0, seed=int(shared * 100), shared=shared)
    assert first_decision(t, seq.boundary)[0].mean() <= 0.05


def test_the_stored_boundary_is_what_a_fresh_simulation_gives():
    fresh = seq.calibrate(400_000, seed=99, looks=12)
    for n, c in enumerate(fresh, start=seq.FIRST):
        assert abs(c - seq.boundary(n)) / seq.boundary(n) < 0.08, (n, c, seq.boundary(n))
    assert seq.spent(2) == 0 and seq.spent(seq.HORIZON) == pytest.approx(seq.SHARE) and seq.spent(100) < 1
    assert seq.boundary(2) == math.inf and seq.boundary(200) > seq.boundary(40)  # past the table: a union bound


def test_two_way_splits_a_variance_built_by_hand():
    """D[s, i] = a_s + b_i exactly (no noise): the seed part is the a's variance, the test part the
    b's over m, and the mean's variance their sum."""
    a = np.array([-0.02, 0.0, 0.02, 0.04])
    b = np.tile([0.5, -0.5], 50)  # 100 images: half favour the arm, half the baseline
    w = two_way(a[:, None] + b[None, :])
    assert (w.n, w.m) == (4, 100)
    assert w.seed_var == pytest.approx(np.var(a * 100, ddof=1))
    assert w.test_var == pytest.approx(np.var(b * 100, ddof=1) / 100)
    assert w.var == pytest.approx(w.seed_var / 4 + w.test_var)


def test_a_comparison_on_the_same_images_holds_the_test_sets_share():
    """Three seeds that agree to the image: the seed-only t-interval is a point (no spread, no
    decision before; now too), while by image the test set's sampling spreads the estimate."""
    rng = np.random.default_rng(0)
    base = rng.random(1000) < 0.4
    arm = base.copy()
    arm[:30] = True  # the arm gets 30 more images right, the same ones on every seed
    arm[30:40] = False
    top = lambda c: float(c.mean() * 100)  # noqa: E731
    by_seed = ({s: top(arm) for s in range(3)}, {s: top(base) for s in range(3)})
    assert delta(*by_seed).low is None  # no spread between seeds
    ex = ({s: arm for s in range(3)}, {s: base for s in range(3)})
    d = delta(*by_seed, examples=ex)
    assert d.m == 1000 and d.seed_var == pytest.approx(0, abs=1e-12) and d.test_var > 0 and d.low < d.mean < d.high
    single = delta({0: top(arm)}, {0: top(base)}, examples=({0: arm}, {0: base}))
    assert single.discordant == (int((arm & ~base).sum()), int((base & ~arm).sum())) and single.low is None


def decisions_with_elimination(effect, k=K, studies=STUDIES, seed=0):
    """(decided?, seeds used) per study when an arm out of reach (bench.sequential.out_of_reach)
    gets no more seeds: racing's elimination, as --until-decided drops it."""
    rng = np.random.default_rng(seed)
    x = rng.normal(effect, 1.0, (studies, k))
    n = np.arange(1, k + 1)
    mean = np.cumsum(x, 1) / n
    var = (np.cumsum(x * x, 1) - n * mean ** 2) / np.maximum(n - 1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):  # one seed: no spread yet
        t = mean / np.sqrt(var / n)
    decided = np.zeros(studies, bool)
    stopped = np.zeros(studies, bool)
    used = np.full(studies, k)
    for look in range(seq.FIRST, k + 1):
        hit = ~stopped & (np.abs(t[:, look - 1]) > seq.boundary(look))
        used[hit], decided[hit], stopped[hit] = look, True, True
        for i in np.flatnonzero(~stopped) if look < k else []:
            if seq.out_of_reach(mean[i, look - 1], var[i, look - 1], 0.0, look, k):
                used[i], stopped[i] = look, True
    return decided, used


def test_dropping_arms_out_of_reach_saves_seeds_keeps_the_error_rate_and_most_of_the_power():
    null_decided, null_used = decisions_with_elimination(0.0, studies=4000, seed=21)
    assert null_decided.mean() <= 0.05 + 3 * se_of(0.05, 4000)
    assert null_used.mean() < 6.5  # without dropping: 9.9 seeds, nearly every null arm runs to 10
    kept, used = decisions_with_elimination(1.0, studies=4000, seed=22)
    t, _, _ = paths(1.0, 1.0, studies=4000, seed=22)
    full = first_decision(t, seq.boundary)[0].mean()
    assert kept.mean() > full - 0.04 and used.mean() < first_decision(t, seq.boundary)[1].mean() - 0.5
