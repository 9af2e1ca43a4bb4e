"""The one transition table of contract.states: total, and the rules it promises."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shopfloor.contract.states import TRANSITIONS, MachineState, Observation, next_state

REPORTS = {
    Observation.REPORTS_IDLE: MachineState.IDLE,
    Observation.REPORTS_RUNNING: MachineState.RUNNING,
    Observation.REPORTS_PAUSED: MachineState.PAUSED,
    Observation.REPORTS_SETUP: MachineState.SETUP,
    Observation.REPORTS_ALARM: MachineState.ALARM,
}


def test_table_is_total_and_closed() -> None:
    assert set(TRANSITIONS) == {(s, o) for s in MachineState for o in Observation}
    assert all(isinstance(v, MachineState) for v in TRANSITIONS.values())


@given(st.sampled_from(MachineState), st.sampled_from(Observation))
def test_every_pair(state: MachineState, observation: Observation) -> None:
    result = next_state(state, observation)
    if observation in REPORTS:
        assert result is REPORTS[observation]  # a report always wins
    elif observation is Observation.SILENT:
        expected = MachineState.ALARM if state is MachineState.ALARM else MachineState.OFFLINE
        assert result is expected  # silence after a critical alarm keeps ALARM
    else:
        assert observation in (Observation.LINK_LOST, Observation.AGENT_LOST)
        assert result is MachineState.OFFLINE


@given(st.lists(st.sampled_from(Observation), min_size=1, max_size=30))
def test_any_sequence_ends_where_its_last_report_says(observations: list[Observation]) -> None:
    state = MachineState.OFFLINE
    for observation in observations:
        state = next_state(state, observation)
    if observations[-1] in REPORTS:
        assert state is REPORTS[observations[-1]]
    else:
        assert state in (MachineState.OFFLINE, MachineState.ALARM)


def test_codes_are_distinct() -> None:
    assert len({s.code for s in MachineState}) == len(MachineState)
