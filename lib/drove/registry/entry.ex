defmodule Drove.Registry.Entry do
  @moduledoc false
  # The registry's replica schema, in one place:
  #
  #   {:key, key}             => {pid, {value, owner}}
  #   {:member, {name, node}} => 1
  #   {:meta, key}            => value
  #
  # `owner` is the name of the registry instance the registration was made through, on the
  # pid's node: several members of one registry may run on one node, and only the one a
  # process registered through answers for it (it re-asserts the entry when a peer removes
  # it, sends it a lost conflict's exit signal, and takes it down when it stops). The keys
  # table shows it as the row's member, `{owner, node(pid)}`, as Horde's does.
  #
  # The C side reads one thing of a registration's value: that it is a 2-tuple whose first
  # element is the pid (c_src/nif/registry_nif.c, is_pid_pair), to index and drop the keys of a
  # process.

  alias Drove.Native

  @doc false
  @spec key(term()) :: binary()
  def key(key), do: Native.key({:key, key})

  @doc false
  @spec value(pid(), term(), atom()) :: binary()
  def value(pid, value, owner), do: Native.value({pid, {value, owner}})

  @doc false
  @spec member_key({atom(), node()}) :: binary()
  def member_key(member), do: Native.key({:member, member})

  @doc false
  @spec meta_key(term()) :: binary()
  def meta_key(key), do: Native.key({:meta, key})

  @doc false
  # The keys table's row of a registration.
  @spec row(term(), pid(), term(), atom()) :: {term(), {atom(), node()}, {pid(), term()}}
  def row(key, pid, value, owner), do: {key, {owner, node(pid)}, {pid, value}}
end
