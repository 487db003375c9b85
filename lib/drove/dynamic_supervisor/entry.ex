defmodule Drove.DynamicSupervisor.Entry do
  @moduledoc false
  # The supervisor's replica schema, in one place:
  #
  #   {:member, m}      => 1                   the member list (add-wins, any node may write;
  #                                            Drove.Cluster.write_members/3)
  #   {:member_info, m} => {status, pid}       written only by m itself: :alive or
  #                                            :shutting_down, and its instance's pid
  #   {:child, id}      => {owner, spec, pid}  owner is {name, node}, or nil once relinquished
  #                     or {owner, spec, pid, state} while a handoff: true child's state moves
  #                        with it (from its answer to the claim of the member that took it)
  #
  # The instance (Impl) and Starter write through these functions; the instance matches the
  # decoded diffs of the same shapes in its apply_diff/2.

  alias Drove.Native

  @doc false
  @spec child_key(term()) :: binary()
  def child_key(id), do: Native.key({:child, id})

  @doc false
  # `state`: :none, or {:ok, state} for an entry that carries a handed-over state
  @spec child_value({atom(), node()} | nil, map(), pid() | nil, :none | {:ok, term()}) ::
          binary()
  def child_value(owner, spec, pid, :none), do: Native.value({owner, spec, pid})
  def child_value(owner, spec, pid, {:ok, state}), do: Native.value({owner, spec, pid, state})

  @doc false
  @spec info_key({atom(), node()}) :: binary()
  def info_key(member), do: Native.key({:member_info, member})

  @doc false
  @spec info_value(:alive | :shutting_down, pid()) :: binary()
  def info_value(status, pid), do: Native.value({status, pid})
end
