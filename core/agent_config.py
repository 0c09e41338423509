"""The `agent:` section of the run config: which algorithm, its hyperparameters, and two size presets.

    cfg = AgentConfig()                                   # algo q2rl, preset cpu
    cfg = from_dict(AgentConfig, {"preset": "paper"})     # 3x512 LayerNorm, ensemble 10/2, UTD 4, batch 256
    cfg = from_dict(AgentConfig, {"preset": "cpu", "utd": 2})   # explicit fields win over the preset

Fields left at None take the preset's or the algorithm's (ALGO_RULES) value when the config is built, so a dumped
config shows the values actually used.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

from q2rl.config import ConfigError, check_numbers, doc

Algo = Literal["q2rl", "q2rl_no_qinit", "q2rl_no_gate", "ibrl", "ibrl_soft", "sac_bc", "rlpd", "batch_online",
               "simplified_q", "bc"]
ALGOS: tuple[str, ...] = get_args(Algo)  # one list: the type and the validation read the same names
DEFAULT_BC_WEIGHT = 0.3  # docs/design.md#actor-loss and the authors' release; the ibrl family's is 0
# The Q2RL family's critic regulariser, beyond the paper's plain critic: why it is on by default, and the evidence,
# in docs/design.md#calibrated-conservatism.
DEFAULT_CALIBRATED_CONSERVATISM = 1.0
Gate = Literal["qhat_bc", "always_rl", "always_bc", "critic_greedy", "critic_softmax", "best_of_n"]


@dataclasses.dataclass(frozen=True)
class AlgoRules:
    """What one algorithm does (docs/design.md#baselines-and-ablations); every per-algorithm choice in core/ reads its row of ALGO_RULES."""

    needs_bc: bool = True  # pi_BC is loaded: the gate proposes its actions and/or the bootstrap scores them
    q_estimation: bool = False  # phase 1 runs: pi_BC rollouts, V_phi on their MC returns, pi_RL's NLL init
    init_critic: bool = False  # phase 1 also regresses Q_RL onto Qhat_BC
    trains: bool = True  # online SAC updates at all
    gate: Gate = "always_rl"  # which action runs: Q2RL's gate (and q2rl_gate), a_rl, a_bc, IBRL's greedy or softmax
    scorer: Literal["qhat_bc", "critic", "target_critic"] = "critic"  # what scores a_bc (the target critic: a_rl too)
    bc_mode: bool = False  # a_bc is always pi_BC's mode, whatever bc_action says (as IBRL publishes)
    bootstrap: Literal["rl", "max_rl_bc"] = "rl"  # the TD bootstrap when the config leaves it empty
    bc_weight: float = DEFAULT_BC_WEIGHT  # the actor's BC weight when the config leaves it empty
    calibrated_conservatism: float = 0.0  # the critic regulariser's weight when left empty (it needs V_phi)
    entropy: bool | None = None  # True: SAC's entropy term is forced on; None: the config's choice (default off)
    uses_demos: bool | None = None  # True: 50/50 demo sampling is forced on; None: the config's use_demos
    # The critic's objective: td (SAC's TD to Q(s', a'~pi_RL)) or iql (batch_online: Q to r + gamma V(s'), V to an
    # expectile of the target critic at the data actions; V is then trained, not fitted once by Q-Estimation).
    critic_objective: Literal["td", "iql"] = "td"
    # What the actor step trains: pi_RL by SAC's loss (sac), or pi_BC's own network by imitation of every stored
    # action, demos and autonomous alike (imitation: batch_online's expressive policy; its image encoder stays
    # frozen so the replay's frozen-encoder views stay valid).
    policy_objective: Literal["sac", "imitation"] = "sac"
    # Defaults of the critic's options when the config leaves them empty (docs/design.md#the-other-methods)
    target_network: bool = True
    ntk_weight: float = 0.0
    cql_weight: float = 0.0
    offline_updates: int = 0
    n_step: int = 1


_Q2RL = AlgoRules(q_estimation=True, init_critic=True, gate="qhat_bc", scorer="qhat_bc",
                  calibrated_conservatism=DEFAULT_CALIBRATED_CONSERVATISM)
_IBRL = AlgoRules(gate="critic_greedy", scorer="target_critic", bc_mode=True, bootstrap="max_rl_bc", bc_weight=0.0)
ALGO_RULES: dict[str, AlgoRules] = {
    "q2rl": _Q2RL,
    "q2rl_no_qinit": dataclasses.replace(_Q2RL, init_critic=False),
    "q2rl_no_gate": dataclasses.replace(_Q2RL, gate="always_rl"),
    "ibrl": _IBRL,
    "ibrl_soft": dataclasses.replace(_IBRL, gate="critic_softmax"),
    "sac_bc": AlgoRules(),
    "rlpd": AlgoRules(needs_bc=False, bc_weight=0.0, entropy=True, uses_demos=True),  # SAC, no BC term
    # Batch online RL's recipe (docs/design.md#batch-online-rl): pi_BC's expressive network kept training by
    # imitation on all data, IQL's Q and V, implicit policy extraction (the best of N samples under Q), OU noise.
    "batch_online": AlgoRules(gate="best_of_n", critic_objective="iql", policy_objective="imitation", bc_weight=0.0,
                              uses_demos=True),
    # Simplified Q (docs/design.md#simplified-q): SAC without a target network, the NTK regulariser and a weighted
    # CQL term on the critic, 3-step returns, symmetric sampling, offline pre-training on the demos first.
    "simplified_q": AlgoRules(needs_bc=False, bc_weight=0.0, entropy=True, uses_demos=True, target_network=False,
                              ntk_weight=0.1, cql_weight=1.0, offline_updates=2000, n_step=3),
    "bc": AlgoRules(trains=False, gate="always_bc"),
}
_FITS_V_PHI = ", ".join(algo for algo, rules in ALGO_RULES.items() if rules.q_estimation)


def _validate_decay(name: str, start: float, decay_updates: int, final: float, start_named: str,
                   example_start: float) -> None:
    """The checks of a weight `name` that falls linearly from `start` to `<name>_final` over
    `<name>_decay_updates` (0: constant), with messages that say which field to fix."""
    if decay_updates < 0:
        raise ConfigError(f"{name}_decay_updates: {decay_updates} must be >= 0 (0: a constant weight)")
    if decay_updates > 0 and start == 0:
        raise ConfigError(f"{name}_decay_updates: set, but {start_named} is 0, so there is no weight to decay; set "
                          f"{name} (e.g. {example_start}) or remove it")
    if not 0.0 <= final <= start:
        raise ConfigError(f"{name}_final: {final} must be in [0, {name}={start}]: the weight decays to it")
    if final > 0 and decay_updates == 0:
        raise ConfigError(f"{name}_final: set, but {name}_decay_updates is 0, so the weight never decays to it; set "
                          f"the decay (e.g. 8000) or remove it")


# Authors' sizes (for a GPU) and a CPU size for sim experiments on this machine. Both count batch_size per critic
# minibatch (batch_accounting: minibatch): `paper` makes 4 x 256 critic transitions per env step; the authors'
# release makes 256 (batch_accounting: update). docs/design.md#batch-and-utd.
PRESETS: dict[str, dict] = {
    "paper": dict(hidden_dims=(512, 512, 512), ensemble_size=10, critic_subsample=2, utd=4, batch_size=256,
                  value_hidden_dims=(512, 512, 512), critic_updates=20000),
    "cpu": dict(hidden_dims=(256, 256), ensemble_size=4, critic_subsample=2, utd=2, batch_size=128,
                value_hidden_dims=(256, 256), critic_updates=4000),
}


@dataclasses.dataclass(frozen=True)
class QEstimationConfig:
    """Phase 1 (docs/design.md#q-estimation): roll out pi_BC, fit V_phi to MC returns, initialise Q_RL and pi_RL."""

    rollout_episodes: int = doc(20, "Episodes of sampled pi_BC rollouts before online RL.")
    failure_return: Literal["discounted", "infinite_horizon"] = doc(
        "infinite_horizon", "MC return of a failed (truncated) episode: plain discounted sum, or r'_neg/(1-gamma).")
    alpha: float = doc(1.0, "Boltzmann temperature in Qhat_BC = V + alpha*(log pi_BC + H).")
    log_prob_floor: float = doc(-100.0, "log pi_BC(a|s) is clipped below at this value.")
    value_heads: int = doc(
        1, "V_phi as the mean of this many heads (one encoder), each regressing the returns of its own bootstrap "
           "resample of the rollout episodes (Poisson(1) weights per episode); 1: one plain fit. Bagging keeps V_phi "
           "near the mean return where the rollouts cannot tell states apart (docs/design.md#the-value-network).")
    value_updates: int = doc(3000, "Most gradient steps fitting V_phi to the MC returns (fewer once its held-out "
                                   "loss has converged: converge_patience).")
    critic_updates: int | None = doc(None, "Most gradient steps regressing the critic ensemble onto Qhat_BC "
                                           "(None: from the agent preset, paper 20000; fewer once converged).")
    actor_updates: int = doc(3000, "Most gradient steps of NLL pre-training of pi_RL on the rollout's BC actions "
                                   "(fewer once converged).")
    init_actor: Literal["bc", "random"] = doc("bc", "Initialise pi_RL by NLL on the rollouts (bc) or not (random).")
    batch_size: int = doc(256, "Minibatch size of the Q-Estimation regressions.")
    learning_rate: float = doc(3e-4, "Adam learning rate of the V_phi and critic regressions.")
    actor_learning_rate: float = doc(1e-3, "Adam learning rate of pi_RL's NLL pre-training (its log std must "
                                           "travel far from init to match pi_BC's).")
    critic_support: Literal["data", "data_policy_uniform"] = doc(
        "data_policy_uniform", "Actions Q_RL regresses onto Qhat_BC at: the rollout's only, or also fresh pi_RL "
        "samples and uniform actions (Qhat_BC is defined everywhere; without them Q_RL extrapolates ~V(s) to "
        "off-BC actions and the gate runs them).")
    support_samples: int = doc(
        8, "With data_policy_uniform: actions per rollout state drawn once per fit from pi_RL and from the uniform "
           "box (each), scored by Qhat_BC; every critic step regresses at one of each per state, drawn at random.")
    holdout_fraction: float = doc(
        0.1, "Share of the rollout episodes held out to tell when each regression has converged (at least one when "
             "there are two or more; none with one: the stages then run their configured steps).")
    converge_patience: int = doc(
        1000, "A regression stops once its held-out loss (checked after every chunk of the fit, 100 steps) has not "
              "improved by converge_tol for this many steps, and keeps its params of the best held-out loss; the "
              "*_updates fields are maxima. Long enough to ride out a rise: the critic's held-out loss can climb for "
              "hundreds of steps before it falls further. 0: no held-out set, every stage runs its *_updates.")
    converge_tol: float = doc(0.01, "The relative improvement of the held-out loss that counts as progress.")

    def validate(self) -> None:
        if self.rollout_episodes < 1:
            raise ConfigError(f"rollout_episodes: {self.rollout_episodes} must be >= 1")
        check_numbers(self, ">= 0", "value_updates", "critic_updates", "actor_updates", "converge_patience",
                      "converge_tol")
        check_numbers(self, ">= 1", "batch_size", "support_samples", "value_heads")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ConfigError(f"holdout_fraction: {self.holdout_fraction} must be in [0, 1) (e.g. 0.1; 0: no "
                              f"held-out set and no early stop)")
        check_numbers(self, "> 0", "learning_rate", "actor_learning_rate")
        check_numbers(self, "finite", "log_prob_floor")
        if self.alpha < 0:
            raise ConfigError(f"alpha: {self.alpha} must be >= 0")


@dataclasses.dataclass(frozen=True)
class BatchOnlineConfig:
    """batch_online's own settings (docs/design.md#batch-online-rl): IQL's expectile, implicit policy extraction,
    the Ornstein-Uhlenbeck noise on the executed actions, and the schedule (iterations, or fully online)."""

    expectile: float = doc(0.8, "IQL expectile tau: V(s) fits the tau-expectile of Q_target(s, a) over the data "
                                "actions (0.5: their mean; towards 1: their max). The paper's 0.8.")
    best_of_n: int = doc(32, "Actions sampled from the policy at every step; the one the critic rates highest runs "
                             "(implicit policy extraction; 1: plain sampling). The paper samples 64.")
    ou_sigma: float = doc(0.05, "Scale sigma of the Ornstein-Uhlenbeck noise added to every executed training action "
                                "(0: none; never in evaluation episodes). The paper's 0.03-0.05.")
    ou_theta: float = doc(5.0, "Mean reversion theta of the OU noise (the paper's 5).")
    ou_dt: float = doc(0.1, "Time step of the OU noise's Euler steps, the control period (10 Hz): the noise keeps "
                            "1 - theta * dt of itself from one step to the next.")
    iteration_episodes: int = doc(
        0, "0: fully online (updates paced to the data, parameters published as they change). M > 0: the paper's "
           "iterations: M training episodes on frozen parameters, then iteration_updates updates on all the data, "
           "then the next M with the new parameters (sim actors wait while the learner trains).")
    iteration_updates: int = doc(2000, "Update calls after each iteration's M episodes (iteration_episodes > 0).")

    def validate(self) -> None:
        if not 0.0 < self.expectile < 1.0:
            raise ConfigError(f"expectile: {self.expectile} must be in (0, 1) (0.5 fits the mean; the paper's 0.8)")
        check_numbers(self, ">= 1", "best_of_n", "iteration_updates")
        check_numbers(self, ">= 0", "ou_sigma", "iteration_episodes")
        check_numbers(self, "> 0", "ou_theta", "ou_dt")
        if self.ou_theta * self.ou_dt > 1.0:
            raise ConfigError(f"ou_theta * ou_dt = {self.ou_theta * self.ou_dt:g} must be at most 1 (the noise would "
                              "overshoot its mean every step); lower ou_theta or ou_dt")


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Algorithm and hyperparameters of the learner and the actor's gating (docs/design.md#overview)."""

    algo: Algo = doc("q2rl", f"Algorithm: {', '.join(ALGOS)}.")
    preset: Literal["cpu", "paper"] = doc("cpu", "Size preset for fields left empty: cpu (this box) or paper (GPU).")
    hidden_dims: tuple[int, ...] | None = doc(None, "Actor and critic MLP widths (None: from the preset).")
    value_hidden_dims: tuple[int, ...] | None = doc(None, "V_phi MLP widths (None: from the preset).")
    ensemble_size: int | None = doc(None, "Critic ensemble heads (None: from the preset).")
    critic_subsample: int | None = doc(None, "Target heads the bootstrap takes the min over (None: preset).")
    utd: int | None = doc(None, "Critic minibatches per update call (update-to-data ratio; None: preset).")
    actor_utd: int = doc(
        1, "Actor (and temperature) steps per update call, spread evenly over the utd critic minibatches: one after "
           "every (utd / actor_utd)-th critic step, on its minibatch. 1: one actor step per call, after the last "
           "(SERL's and RLPD's schedule); utd: one after each critic step, as plain SAC repeated utd times.")
    batch_size: int | None = doc(None, "Transitions per critic minibatch, or per update call with batch_accounting: "
                                       "update (None: from the preset).")
    batch_accounting: Literal["minibatch", "update"] = doc(
        "minibatch", "What batch_size counts. minibatch: each of the utd critic minibatches of an update call holds "
                     "batch_size transitions (utd x batch_size per call). update: the call draws batch_size and splits "
                     "them into utd minibatches of batch_size / utd, as the Q2RL authors' release counts 'batch 256, "
                     "UTD 4' (a quarter of the critic work per env step).")
    critic_layer_norm: bool = doc(True, "LayerNorm in the critic MLP.")
    discount: float = doc(0.99, "Discount gamma.")
    reward_scale: float = doc(5.0, "Reward shaping r' = reward_scale * r + reward_bias.")
    reward_bias: float = doc(-1.0, "Reward shaping r' = reward_scale * r + reward_bias.")
    n_step: int | None = doc(None, "n-step returns (1 = one-step TD; None: 3 for simplified_q, as its paper, else 1).")
    tau: float = doc(0.005, "Polyak rate of the target critic.")
    actor_lr: float = doc(3e-4, "Adam learning rate of pi_RL.")
    critic_lr: float = doc(3e-4, "Adam learning rate of the critic ensemble (and the image encoder).")
    bc_weight: float | None = doc(
        None, f"w in the actor loss (1-w)(-Q) + w NLL_piRL(a_bc|s). None: {DEFAULT_BC_WEIGHT} (docs/design.md#actor-loss), but 0 for "
              "ibrl/ibrl_soft, whose published actor (and the Q2RL authors' IBRL baseline) maximises Q alone, and "
              "for rlpd, which has no BC term.")
    bc_weight_decay_updates: int = doc(
        0, "Updates over which bc_weight falls linearly to bc_weight_final (0: it stays constant). pi_RL stays "
           "anchored to pi_BC while the critic knows little, and moves further from it later.")
    bc_weight_final: float = doc(0.0, "bc_weight the decay ends at and then keeps (e.g. 0.1 under 0.3).")
    bootstrap: Literal["rl", "max_rl_bc", "auto"] | None = doc(
        None, "TD bootstrap at s': min-subset Q_target(s', a'~pi_RL) (rl, docs/design.md#critic-ensemble-and-bootstrap), or the better of that and "
              "Q_target(s', pi_BC's mode) (max_rl_bc, IBRL's rule); None (or auto, as older config.yaml files say): "
              "max_rl_bc for ibrl/ibrl_soft, rl otherwise.")
    calibrated_conservatism: float | None = doc(
        None, "Weight of a Cal-QL-style critic regulariser, max(Q(s, a~pi_RL), V_phi(s)) - Q(s, a_data): Q_RL at "
              f"pi_RL's actions is pulled down where it exceeds V_phi. None: {DEFAULT_CALIBRATED_CONSERVATISM} for "
              f"{_FITS_V_PHI} (docs/design.md#calibrated-conservatism), 0 for the rest, which fit no "
              "V_phi. 0 is the plain critic.")
    calibrated_conservatism_decay_updates: int = doc(
        0, "Updates over which calibrated_conservatism falls linearly to calibrated_conservatism_final (0: it stays "
           "constant; docs/design.md#calibrated-conservatism).")
    calibrated_conservatism_final: float = doc(
        0.0, "Weight the decay ends at and then keeps (e.g. 1.0 under a start of 2.0: a stronger hold while data is "
             "thin, the constant weight after).")
    calibrated_fraction: float = doc(
        0.125, "Share of each critic minibatch the calibrated term is computed on (its first rows; the minibatch is "
               "a random draw). Below 1 the term's extra cost (pi_RL's samples, V_phi and a second critic pass) "
               "shrinks in proportion; its expectation is the same, its noise larger. 1: every row.")
    actor_q: Literal["mean", "min"] = doc("mean", "Q in the actor loss: mean over heads (as designed) or min (authors' code).")
    entropy: bool | None = doc(None, "SAC's entropy term in the actor loss and the bootstrap (None: rlpd's only).")
    init_temperature: float = doc(0.1, "Initial entropy temperature (entropy: true).")
    target_entropy: float | None = doc(None, "Target entropy of the auto temperature (None: -action_dim/2).")
    actor_log_std_min: float = doc(-5.0, "Lower bound of pi_RL's log std.")
    actor_log_std_max: float = doc(2.0, "Upper bound of pi_RL's log std.")
    rl_action: Literal["sample", "mode"] = doc("sample", "a_rl on the robot: sampled from pi_RL or its mode.")
    bc_action: Literal["sample", "mode"] = doc(
        "sample", "a_bc the Q2RL gate proposes (and pi_RL's NLL later fits): sampled from pi_BC (as designed) or its mode "
                  "(as ibrl always does); mode also makes pi_BC act with its mode in the Q-Estimation rollouts.")
    q2rl_gate: Literal["qhat_bc", "prior_weighted"] = doc(
        "qhat_bc", "How the Q2RL gate scores its two candidates: min-head Q_RL(s, a_rl) against the frozen "
                   "Qhat_BC(s, a_bc) (docs/design.md#gate-rule), or both by the live critic plus the prior, min-head Q_RL(s, a) + "
                   "alpha * max(log pi_BC(a|s), floor) (V_phi cancels, so the two estimators' different state "
                   "values cannot decide the choice; the recorded q_bc and q_rl are then these scores).")
    ibrl_beta: float = doc(10.0, "Softmax inverse temperature of ibrl_soft's action choice.")
    demo_fraction: float = doc(0.5, "Share of each batch drawn from the demo buffer when there is one.")
    use_demos: bool | None = doc(None, "Keep a demo buffer and sample batches 50/50 from it (None: rlpd's only).")
    random_steps: int = doc(0, "Uniform-random actions for the first online (post-phase-1) training steps of each "
                               "actor, recorded as RL steps; for algorithms without a BC prior (rlpd). Never in "
                               "evaluation episodes.")
    image_feature_dim: int = doc(64, "Feature size of each camera's conv encoder (image observations).")
    image_encoder: Literal["frozen_bc", "learned"] | None = doc(
        None, "How the agent's networks see camera images (docs/design.md#pixels-and-the-frozen-encoder). frozen_bc: "
              "pi_BC's trained conv encoder, frozen, its features computed once per frame (at the actor, and as a "
              "frame enters replay), so no image work in the update: the CPU choice. learned: a conv encoder of the "
              "critic's own, trained with DrQ random shifts (image_shift_pad), as the Q2RL paper: the GPU choice. "
              "None: frozen_bc for the algorithms that load pi_BC, learned for rlpd.")
    read_bc_memory: bool = doc(
        True, "With a recurrent pi_BC (gmm_rnn), pi_RL, the critic and V_phi also read its memory (LSTM h and c) with "
              "each observation, so they can tell apart what it tells apart (docs/design.md#recurrent-bc); no effect "
              "with a feed-forward pi_BC.")
    image_shift_pad: int = doc(4, "DrQ random-shift padding in pixels of the learned image encoder's minibatches "
                                  "(0 disables; frozen_bc reads no pixels in the update).")
    target_network: bool | None = doc(
        None, "Bootstrap from a Polyak-averaged target critic (true), or from the live critic through stop_gradient "
              "(false, Simplified Q: the NTK regulariser takes the target network's place). None: false for "
              "simplified_q, true otherwise.")
    ntk_weight: float | None = doc(
        None, "beta of Simplified Q's NTK regulariser on the critic: the mean squared dot product of the critic's "
              "penultimate features at (s, a ~ uniform) and at an independently drawn (s2, a2 ~ pi_RL(s2)), per "
              "head (docs/design.md#simplified-q). None: 0.1 for simplified_q, 0 otherwise; any algorithm may use it.")
    cql_weight: float | None = doc(
        None, "alpha of Simplified Q's CQL term: mean (1 - exp(-|a - a_u|^2)) Q(s, a_u) over uniform actions a_u, "
              "minus mean Q(s, a_data). None: 1.0 for simplified_q, 0 otherwise.")
    offline_updates: int | None = doc(
        None, "Update calls on the demo buffer alone before online RL (offline pre-training; needs the demos: "
              "use_demos). None: 2000 for simplified_q (its paper 100k on a GPU), 0 otherwise.")
    batch_online: BatchOnlineConfig = doc(BatchOnlineConfig(), "batch_online's settings.")
    q_estimation: QEstimationConfig = doc(QEstimationConfig(), "Phase 1: Q-Estimation.")

    def __post_init__(self) -> None:
        # Resolved here, so a dumped config shows the values the run uses and a resumed run keeps them (idempotent).
        # An older config.yaml (`bootstrap: auto`) says rlpd's `entropy/use_demos: false`, which it ignored: no error.
        if self.algo not in ALGO_RULES:
            raise ConfigError(f"algo: {self.algo!r} is not one of {', '.join(ALGOS)}")
        for name, forced in (("entropy", self.rules.entropy), ("use_demos", self.rules.uses_demos)):
            if forced and getattr(self, name) is False and self.bootstrap != "auto":
                raise ConfigError(f"{name}: false, but {self.algo} is SAC with entropy and 50/50 demo sampling, both "
                                  f"always on; remove {name}, or use sac_bc (SAC with a BC term, both optional)")
            if getattr(self, name) is None or forced:
                object.__setattr__(self, name, bool(forced))
        for name in ("bc_weight", "calibrated_conservatism", "bootstrap", "target_network", "ntk_weight",
                     "cql_weight", "offline_updates", "n_step"):
            if getattr(self, name) in (None, "auto"):
                object.__setattr__(self, name, getattr(self.rules, name))
        if self.image_encoder is None:
            object.__setattr__(self, "image_encoder", "frozen_bc" if self.rules.needs_bc else "learned")
        preset = PRESETS.get(self.preset)
        if preset is None:
            raise ConfigError(f"preset: {self.preset!r} is not one of {', '.join(PRESETS)}")
        for name, value in preset.items():
            if name == "critic_updates":
                if self.q_estimation.critic_updates is None:
                    object.__setattr__(self, "q_estimation",
                                       dataclasses.replace(self.q_estimation, critic_updates=value))
            elif getattr(self, name) is None:
                object.__setattr__(self, name, value)

    @property
    def minibatch_size(self) -> int:
        """Transitions in each critic minibatch (see batch_accounting)."""
        return self.batch_size if self.batch_accounting == "minibatch" else self.batch_size // self.utd

    @property
    def rules(self) -> AlgoRules:
        """This algorithm's row of ALGO_RULES."""
        return ALGO_RULES[self.algo]

    @property
    def ou_noise(self) -> tuple[float, float, float] | None:
        """(theta, sigma, dt) of the OU noise on the executed training actions: batch_online's (the algorithm whose
        gate is best_of_n), None for the others or with ou_sigma 0."""
        bo = self.batch_online
        return (bo.ou_theta, bo.ou_sigma, bo.ou_dt) if self.rules.gate == "best_of_n" and bo.ou_sigma > 0 else None

    @property
    def iteration_episodes(self) -> int:
        """batch_online's episodes per iteration; 0 (fully online) for it by default and for every other algorithm."""
        return self.batch_online.iteration_episodes if self.rules.gate == "best_of_n" else 0

    def validate(self) -> None:
        for name in ("hidden_dims", "value_hidden_dims"):
            if not getattr(self, name):
                raise ConfigError(f"{name}: {getattr(self, name)} must list at least one layer width")
        check_numbers(self, ">= 1", "hidden_dims", "value_hidden_dims", "image_feature_dim")
        check_numbers(self, "> 0", "actor_lr", "critic_lr", "reward_scale", "init_temperature", "ibrl_beta")
        check_numbers(self, "finite", "reward_bias", "target_entropy", "actor_log_std_min", "actor_log_std_max")
        if self.actor_log_std_min >= self.actor_log_std_max:
            raise ConfigError(f"actor_log_std_min: {self.actor_log_std_min} must be below actor_log_std_max="
                              f"{self.actor_log_std_max} (defaults -5 and 2)")
        if self.ensemble_size < 1 or not 1 <= self.critic_subsample <= self.ensemble_size:
            raise ConfigError(f"critic_subsample: {self.critic_subsample} must be in [1, ensemble_size="
                              f"{self.ensemble_size}]")
        if self.random_steps < 0:
            raise ConfigError(f"random_steps: {self.random_steps} must be >= 0")
        if not 0.0 < self.calibrated_fraction <= 1.0:
            raise ConfigError(f"calibrated_fraction: {self.calibrated_fraction} must be in (0, 1]")
        if self.calibrated_conservatism < 0:
            raise ConfigError(f"calibrated_conservatism: {self.calibrated_conservatism} must be >= 0")
        if self.calibrated_conservatism > 0 and not self.rules.q_estimation:
            raise ConfigError(f"calibrated_conservatism: its reference is V_phi from Q-Estimation, which {self.algo} "
                              f"does not fit; use it with {_FITS_V_PHI}, or set it to 0")
        _validate_decay("calibrated_conservatism", self.calibrated_conservatism,
                       self.calibrated_conservatism_decay_updates, self.calibrated_conservatism_final,
                       start_named="calibrated_conservatism", example_start=2.0)
        if self.image_encoder not in ("frozen_bc", "learned"):
            raise ConfigError(f"image_encoder: {self.image_encoder!r} is not frozen_bc or learned")
        if self.image_encoder == "frozen_bc" and not self.rules.needs_bc:
            raise ConfigError(f"image_encoder: frozen_bc reads pi_BC's encoder, and {self.algo} loads no pi_BC; use "
                              "learned")
        if self.image_shift_pad < 0:
            raise ConfigError(f"image_shift_pad: {self.image_shift_pad} must be >= 0 (0 disables the random shift)")
        if not 0.0 <= self.bc_weight <= 1.0:
            raise ConfigError(f"bc_weight: {self.bc_weight} must be in [0, 1]")
        if self.bc_weight > 0 and not self.rules.needs_bc:
            raise ConfigError(f"bc_weight: {self.bc_weight} would be ignored: {self.algo}'s actor has no BC term; "
                              "remove bc_weight, or use sac_bc (SAC with the BC term)")
        _validate_decay("bc_weight", self.bc_weight, self.bc_weight_decay_updates,
                       self.bc_weight_final, start_named=f"{self.algo}'s bc_weight", example_start=0.3)
        check_numbers(self, ">= 0", "ntk_weight", "cql_weight", "offline_updates")
        if self.offline_updates > 0 and not self.use_demos:
            raise ConfigError(f"offline_updates: {self.offline_updates} pre-train on the demo buffer, which this run "
                              "does not keep; set use_demos: true (and bc.demos), or offline_updates: 0")
        if not self.target_network and (self.rules.scorer == "target_critic" or self.bootstrap == "max_rl_bc"):
            raise ConfigError(f"target_network: false, but {self.algo} scores actions with the target critic; "
                              "remove target_network")
        if self.rules.critic_objective == "iql" and self.calibrated_conservatism > 0:
            raise ConfigError("calibrated_conservatism: batch_online's V is IQL's, not Q-Estimation's V_phi; set 0")
        if self.utd < 1 or self.batch_size < 1 or self.n_step < 1:
            raise ConfigError("utd, batch_size and n_step must be >= 1")
        if self.batch_accounting == "update" and self.batch_size % self.utd:
            raise ConfigError(f"batch_size: {self.batch_size} must split into utd={self.utd} equal minibatches with "
                              f"batch_accounting: update (e.g. {self.utd * max(1, self.batch_size // self.utd)})")
        if not 1 <= self.actor_utd <= self.utd or self.utd % self.actor_utd:
            raise ConfigError(f"actor_utd: {self.actor_utd} must divide utd={self.utd} (1 <= actor_utd <= utd), so the "
                              f"actor steps are spread evenly over the critic minibatches; e.g. 1, or {self.utd}")
        if not 0.0 < self.discount < 1.0:
            raise ConfigError(f"discount: {self.discount} must be in (0, 1)")
        if not 0.0 < self.tau <= 1.0:
            raise ConfigError(f"tau: {self.tau} must be in (0, 1]")
        if not 0.0 <= self.demo_fraction < 1.0:
            raise ConfigError(f"demo_fraction: {self.demo_fraction} must be in [0, 1)")

    @property
    def failure_reward(self) -> float:
        """Shaped reward of a non-success step, r'_neg = reward_bias (reward 0)."""
        return self.reward_bias
