defmodule Drove.Test.Gen do
  @moduledoc false
  # A small seeded generator of random terms for property tests (no StreamData here).
  #
  # Every generator takes and returns an explicit :rand state, so a run is reproduced from
  # its seed alone: `seed/1` builds the state from an integer (use ExUnit's seed, printed at
  # the end of every run and set with `mix test --seed N`), and `check/4` runs a property
  # over `n` generated cases and, on failure, raises with the seed and the case index.

  import Bitwise

  @type state :: :rand.state()

  @doc "A generator state from an integer seed (exsss, the default :rand algorithm)."
  @spec seed(integer()) :: state()
  def seed(n) when is_integer(n), do: :rand.seed_s(:exsss, {n, n * 7 + 1, n * 13 + 2})

  @doc "ExUnit's seed of this run (set with `mix test --seed N`)."
  @spec exunit_seed() :: integer()
  def exunit_seed, do: ExUnit.configuration()[:seed]

  @doc """
  Runs `prop.(value, index)` for `n` values of `gen` from `seed`. A failing case is re-raised
  with the seed, the index and the value (inspected, truncated) in the message.
  """
  @spec check(
          integer(),
          pos_integer(),
          (state() -> {term(), state()}),
          (term(), integer() ->
             any())
        ) ::
          non_neg_integer()
  def check(seed, n, gen, prop) do
    Enum.reduce(1..n, seed(seed), fn i, st ->
      {value, st} = gen.(st)

      try do
        prop.(value, i)
      rescue
        e ->
          reraise ExUnit.AssertionError,
                  [
                    message:
                      "property failed (seed #{seed}, case #{i}): " <>
                        Exception.message(e) <>
                        "\nvalue: " <> inspect(value, limit: 20, printable_limit: 200)
                  ],
                  __STACKTRACE__
      end

      st
    end)

    n
  end

  # ------------------------------------------------------------------ primitives

  @spec uniform(pos_integer(), state()) :: {pos_integer(), state()}
  def uniform(n, st), do: :rand.uniform_s(n, st)

  @doc "An integer in lo..hi."
  @spec int_in(integer(), integer(), state()) :: {integer(), state()}
  def int_in(lo, hi, st) do
    {x, st} = :rand.uniform_s(hi - lo + 1, st)
    {lo + x - 1, st}
  end

  @doc "One element of a non-empty list."
  @spec one_of(list(), state()) :: {term(), state()}
  def one_of(list, st) do
    {i, st} = :rand.uniform_s(length(list), st)
    {Enum.at(list, i - 1), st}
  end

  @doc "Applies one of the generator functions (each `state -> {term, state}`)."
  @spec frequency([{pos_integer(), (state() -> {term(), state()})}], state()) ::
          {term(), state()}
  def frequency(weighted, st) do
    total = weighted |> Enum.map(&elem(&1, 0)) |> Enum.sum()
    {x, st} = :rand.uniform_s(total, st)
    pick(weighted, x).(st)
  end

  defp pick([{w, g} | _], x) when x <= w, do: g
  defp pick([{w, _} | rest], x), do: pick(rest, x - w)

  @doc "`n` values of `gen`."
  @spec list_of(non_neg_integer(), (state() -> {term(), state()}), state()) :: {list(), state()}
  def list_of(n, gen, st) do
    {acc, st} = Enum.reduce(1..n//1, {[], st}, fn _, {acc, st} -> gen.(st) |> push(acc) end)
    {Enum.reverse(acc), st}
  end

  defp push({v, st}, acc), do: {[v | acc], st}

  # ------------------------------------------------------------------ leaves

  @atoms [
    nil,
    true,
    false,
    :ok,
    :error,
    :undefined,
    :a,
    :"with space",
    :ünïcödé,
    :"",
    :"Elixir.Some.Module",
    :drove_delta,
    :drove_sync_req,
    :EXIT,
    :"#{String.duplicate("x", 255)}"
  ]

  @spec atom(state()) :: {atom(), state()}
  def atom(st), do: one_of(@atoms, st)

  @doc "Small, word-sized, negative and big (bignum, up to ~2^300) integers."
  @spec integer(state()) :: {integer(), state()}
  def integer(st) do
    frequency(
      [
        {4, &int_in(-10, 10, &1)},
        {3, &int_in(-(1 <<< 31), 1 <<< 31, &1)},
        {2, &int_in(-(1 <<< 64), 1 <<< 64, &1)},
        {1, &int_in(-(1 <<< 300), 1 <<< 300, &1)},
        {1, &one_of([0, -1, (1 <<< 59) - 1, 1 <<< 59, 1 <<< 64, -(1 <<< 64) - 1], &1)}
      ],
      st
    )
  end

  @spec float(state()) :: {float(), state()}
  def float(st) do
    {x, st} = :rand.uniform_s(st)
    {e, st} = int_in(-300, 300, st)
    {sign, st} = one_of([1, -1], st)

    frequency(
      [
        {6, fn st -> {sign * x * :math.pow(10, e), st} end},
        {1, &one_of([0.0, -0.0, 1.0e308, -1.0e-308, 5.0e-324, 0.1], &1)}
      ],
      st
    )
  end

  @doc "Random bytes (so usually not UTF-8) of a length in 0..max."
  @spec bytes(non_neg_integer(), state()) :: {binary(), state()}
  def bytes(max, st) do
    {n, st} = int_in(0, max, st)
    exact_bytes(n, st)
  end

  @spec exact_bytes(non_neg_integer(), state()) :: {binary(), state()}
  def exact_bytes(0, st), do: {"", st}

  def exact_bytes(n, st) when n <= 64 do
    {bytes, st} = list_of(n, &int_in(0, 255, &1), st)
    {:erlang.list_to_binary(bytes), st}
  end

  # Large ones: a random 8-byte seed expanded with a fast hash chain (cheap, still varied).
  def exact_bytes(n, st) do
    {s, st} = int_in(0, (1 <<< 64) - 1, st)
    block = :crypto.hash(:sha512, <<s::64>>)
    reps = div(n, 64) + 1
    {binary_part(:binary.copy(block, reps), 0, n), st}
  end

  @doc "A binary of up to 4 KiB: mostly short, often not UTF-8."
  @spec binary(state()) :: {binary(), state()}
  def binary(st) do
    frequency(
      [
        {6, &bytes(16, &1)},
        {3, &one_of(["", "héllo", <<0>>, <<255, 254, 0>>, "a\0b", <<0xC3>>], &1)},
        {1, &bytes(4096, &1)}
      ],
      st
    )
  end

  @doc "A large binary: 64 KiB .. 1 MiB."
  @spec large_binary(state()) :: {binary(), state()}
  def large_binary(st) do
    {n, st} = int_in(65_536, 1_048_576, st)
    exact_bytes(n, st)
  end

  @doc "A bitstring whose bit size is not a multiple of 8."
  @spec bitstring(state()) :: {bitstring(), state()}
  def bitstring(st) do
    {b, st} = bytes(8, st)
    {bits, st} = int_in(1, 7, st)
    {x, st} = int_in(0, (1 <<< bits) - 1, st)
    {<<b::binary, x::size(bits)>>, st}
  end

  @doc "A pid: self, a dead local process, or one of a made-up node (not connected)."
  @spec pid(state()) :: {pid(), state()}
  def pid(st) do
    one_of(
      [
        self(),
        dead_pid(),
        foreign_pid(:"ghost@127.0.0.1", 7, 1)
      ],
      st
    )
  end

  @spec ref(state()) :: {reference(), state()}
  def ref(st), do: one_of([make_ref(), :erlang.list_to_ref(~c"#Ref<0.1.2.3>")], st)

  @spec fun(state()) :: {function(), state()}
  def fun(st) do
    y = :erlang.unique_integer()
    one_of([&Enum.map/2, fn x -> {x, y} end, &:erlang.self/0, fn -> y end], st)
  end

  @doc "A port (of a short-lived command, closed) or the local node's atom."
  @spec port_or_node(state()) :: {port() | node(), state()}
  def port_or_node(st), do: one_of([hd(Port.list()), node()], st)

  defp dead_pid do
    pid = spawn(fn -> :ok end)
    ref = Process.monitor(pid)

    receive do
      {:DOWN, ^ref, :process, ^pid, _} -> pid
    end
  end

  @doc "A pid of another node (not connected), built from its external format."
  @spec foreign_pid(atom(), non_neg_integer(), non_neg_integer()) :: pid()
  def foreign_pid(node, id, creation) do
    name = Atom.to_string(node)

    :erlang.binary_to_term(
      <<131, 88, 119, byte_size(name)::8, name::binary, id::32, 0::32, creation::32>>
    )
  end

  # ------------------------------------------------------------------ composite terms

  @doc "A leaf: a term with no sub-terms."
  @spec leaf(state()) :: {term(), state()}
  def leaf(st) do
    frequency(
      [
        {3, &atom/1},
        {4, &integer/1},
        {2, &float/1},
        {3, &binary/1},
        {1, &bitstring/1},
        {1, &pid/1},
        {1, &ref/1},
        {1, &fun/1},
        {1, &port_or_node/1}
      ],
      st
    )
  end

  @doc """
  Any term: leaves, lists, improper lists, tuples, maps (small, and > 32 keys, which are
  hash maps in the VM), charlists, keyword lists, deep nesting (depth 50..60) and, one time
  in 45, a large binary (64 KiB .. 1 MiB). `term/3` bounds the width (`size`) and depth.
  """
  @spec term(state()) :: {term(), state()}
  def term(st) do
    frequency([{40, &term(&1, 5, 4)}, {4, &deep/1}, {1, &large_binary/1}], st)
  end

  @spec term(state(), non_neg_integer(), non_neg_integer()) :: {term(), state()}
  def term(st, _size, 0), do: leaf(st)

  def term(st, size, depth) do
    frequency(
      [
        {5, &leaf/1},
        {2, &list(&1, size, depth)},
        {1, &improper(&1, size, depth)},
        {2, &tuple(&1, size, depth)},
        {2, &map(&1, size, depth)},
        {1, &big_map(&1, depth)},
        {1, &one_of([~c"charlist", [a: 1, b: [c: 2]], [], {}, %{}, [[]]], &1)}
      ],
      st
    )
  end

  defp children(st, size, depth) do
    {n, st} = int_in(0, size, st)
    list_of(n, &term(&1, div(size, 2), depth - 1), st)
  end

  defp list(st, size, depth), do: children(st, size, depth)

  defp improper(st, size, depth) do
    {items, st} = children(st, max(size, 1), depth)
    {tail, st} = leaf(st)
    tail = if is_list(tail), do: :tail, else: tail

    case items do
      [] -> {[:head | tail], st}
      _ -> {items ++ tail, st}
    end
  end

  defp tuple(st, size, depth) do
    {items, st} = children(st, size, depth)
    {List.to_tuple(items), st}
  end

  defp map(st, size, depth) do
    {ks, st} = children(st, size, depth)
    {vs, st} = list_of(length(ks), &term(&1, 2, depth - 1), st)
    {Map.new(Enum.zip(ks, vs)), st}
  end

  defp big_map(st, depth) do
    {n, st} = int_in(33, 64, st)
    {vs, st} = list_of(n, &term(&1, 2, min(depth - 1, 1)), st)
    {Map.new(Enum.with_index(vs, fn v, i -> {{:k, i}, v} end)), st}
  end

  @doc "A term nested 50..60 levels deep (lists, tuples and maps in turn)."
  @spec deep(state()) :: {term(), state()}
  def deep(st) do
    {d, st} = int_in(50, 60, st)
    {leaf, st} = leaf(st)

    Enum.reduce(1..d, {leaf, st}, fn i, {acc, st} ->
      {wrap, st} = one_of([:list, :tuple, :map, :improper], st)

      acc =
        case wrap do
          :list -> [acc, i]
          :tuple -> {i, acc}
          :map -> %{i => acc, :x => i}
          :improper -> [acc | i]
        end

      {acc, st}
    end)
  end

  # ------------------------------------------------------------------ wrong-typed arguments

  @doc """
  A value of the wrong type for an argument expecting `kind`: `:list`, `:map`, `:fun1`,
  `:pid`, `:binary`, `:pos_integer`, `:atom`, `:keyword`, `:server`.
  """
  @spec wrong(atom(), state()) :: {term(), state()}
  def wrong(kind, st) do
    {v, st} =
      frequency(
        [
          {4, &leaf/1},
          {2, &term(&1, 4, 2)},
          {1,
           &one_of(
             [
               [:a | :b],
               [1, 2 | 3],
               -1,
               0,
               1 <<< 70,
               -(1 <<< 70),
               1.5,
               "str",
               {:a, :b},
               %{a: 1},
               [{"k", 1}],
               [:not_a_pair],
               {:global, {:no, :such}}
             ],
             &1
           )}
        ],
        st
      )

    if right_type?(kind, v), do: wrong(kind, st), else: {v, st}
  end

  defp right_type?(:list, v), do: is_list(v)
  defp right_type?(:map, v), do: is_map(v)
  defp right_type?(:fun1, v), do: is_function(v, 1)
  defp right_type?(:pid, v), do: is_pid(v)
  defp right_type?(:binary, v), do: is_binary(v)
  defp right_type?(:pos_integer, v), do: is_integer(v) and v > 0
  defp right_type?(:atom, v), do: is_atom(v)
  defp right_type?(:keyword, v), do: is_list(v) and Keyword.keyword?(v)

  defp right_type?(:server, v),
    do: is_pid(v) or is_atom(v) or match?({a, b} when is_atom(a) and is_atom(b), v)

  @doc "Wrong-typed values for a NIF: non-resources, negative and huge integers, improper lists."
  @spec nif_garbage(state()) :: {term(), state()}
  def nif_garbage(st) do
    frequency(
      [
        {3, &leaf/1},
        {1, &term(&1, 3, 2)},
        {2,
         &one_of(
           [
             make_ref(),
             -1,
             0,
             1 <<< 64,
             1 <<< 70,
             -(1 <<< 63),
             [1 | 2],
             [{"k", "v"} | :tail],
             [{"k"}],
             [{"k", "v", "w"}],
             [{:a, :b}],
             <<131>>,
             <<"DV", 1, 1>>,
             <<1::size(3)>>,
             {:ok, "x"},
             self()
           ],
           &1
         )}
      ],
      st
    )
  end
end
